"""Ray job entrypoint for `vwe make-sem-seg`, e.g.
    ray job submit --working-dir . -- python jobs/make_sem_seg.py --config voc --gpu
Takes the same arguments as `vwe make-sem-seg`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-sem-seg", *sys.argv[1:]]))

"""Ray job entrypoint for `vwe make-pseudo`, e.g.
    ray job submit --working-dir . -- python jobs/make_pseudo.py --config voc
Takes the same arguments as `vwe make-pseudo`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-pseudo", *sys.argv[1:]]))

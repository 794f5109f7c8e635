"""Ray job entrypoint for `vwe infer-seg`, e.g.
    ray job submit --working-dir . -- python jobs/infer_seg.py --config voc --gpu --crf
Takes the same arguments as `vwe infer-seg`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer-seg", *sys.argv[1:]]))

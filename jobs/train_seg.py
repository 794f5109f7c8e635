"""Ray job entrypoint for `vwe train-seg`, e.g.
    ray job submit --working-dir . -- python jobs/train_seg.py --config voc --num-workers 5 --gpu
Takes the same arguments as `vwe train-seg`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-seg", *sys.argv[1:]]))

"""Ray job entrypoint for stage 1, e.g.
    ray job submit --working-dir . -- python jobs/train_cam.py --config voc --num-workers 8 --gpu
Takes the same arguments as `vwe train-cam`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-cam", *sys.argv[1:]]))

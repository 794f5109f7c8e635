"""Ray job entrypoint for `vwe train-irn`, e.g.
    ray job submit --working-dir . -- python jobs/train_irn.py --config voc --num-workers 4 --gpu
Takes the same arguments as `vwe train-irn`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-irn", *sys.argv[1:]]))

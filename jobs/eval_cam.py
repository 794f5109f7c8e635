"""Ray job entrypoint for `vwe eval-cam`, e.g.
    ray job submit --working-dir . -- python jobs/eval_cam.py --config voc
Takes the same arguments as `vwe eval-cam`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-cam", *sys.argv[1:]]))

"""Ray job entrypoint for `vwe make-cam`, e.g.
    ray job submit --working-dir . -- python jobs/make_cam.py --config voc
Takes the same arguments as `vwe make-cam`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-cam", *sys.argv[1:]]))

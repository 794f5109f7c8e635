"""Ray job entrypoint for `vwe tune`, e.g.
    ray job submit --working-dir . -- python tune/sweep.py --config voc --space tune/space_voc.yaml
Takes the same arguments as `vwe tune`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs). The
job is the sweep's driver: if it dies, submit it again with --resume.
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))

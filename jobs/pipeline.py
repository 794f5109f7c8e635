"""Ray job entrypoint for `vwe run` (the whole pipeline), e.g.
    python jobs/submit.py pipeline --config voc --set out_dir=/mnt/vwe/runs/voc ray.use_gpu=true
Takes the same arguments as `vwe run`; joins the cluster the job runs on (RAY_ADDRESS is set by Ray Jobs).
"""
import sys

from vwe.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))

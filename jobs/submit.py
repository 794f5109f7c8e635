"""Submits the pipeline or one stage to a Ray cluster through the Jobs API, from a laptop or from the head node:

    python jobs/submit.py [--address http://127.0.0.1:8265] [--no-wait] JOB [arguments of the vwe command...]
    python jobs/submit.py pipeline --config voc --set out_dir=/mnt/vwe/runs/voc ray.use_gpu=true

JOB names an entrypoint in jobs/ (pipeline = `vwe run`, train_cam, make_cam, eval_cam, make_pseudo, ...). This
checkout is uploaded as the job's working_dir, without datasets, runs, the venv, git objects and weights, so the
cluster runs this code with the dependencies its nodes have (cluster.yaml setup_commands); --pip adds packages to
the job's environment (Ray builds a virtualenv per node for them). The job's id is printed, then its logs are
followed until it ends; the exit status is 0 only if it SUCCEEDED.

Token authentication (Ray 2.60): RAY_AUTH_MODE defaults to `token` here, and the client sends the cluster's token
from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# gitignore patterns relative to the repository; a leading "/" anchors them (vwe/data/ is code, /data/ is not)
EXCLUDES = ["/.venv", "/data", "/runs", "/outputs", ".git", "__pycache__", ".pytest_cache", "*.egg-info", "*.pth"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards the dashboard


def job_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "submit")


def runtime_env(pip: list[str] | None = None, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime_env: this repository as working_dir (on the workers' sys.path), optional pip packages and
    environment variables."""
    env: dict[str, Any] = {"working_dir": str(REPO), "excludes": list(EXCLUDES)}
    if pip:
        env["pip"] = list(pip)
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def entrypoint(job: str, args: list[str]) -> str:
    """The shell command the cluster runs (in the unpacked working_dir, with the cluster's `python`)."""
    if job not in job_names():
        raise SystemExit(f"submit: unknown job {job!r}; one of {', '.join(job_names())}")
    return shlex.join(["python", f"jobs/{job}.py", *args])


def _check_token() -> None:
    if os.environ["RAY_AUTH_MODE"] != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if not path.is_file():
        raise SystemExit(f"submit: token authentication is on but {path} does not exist: copy the cluster's token "
                         "there (or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH); `ray get-auth-token --generate` makes "
                         "a new one before `ray up`")


async def _print_logs(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/submit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_ADDRESS),
                        help=f"the cluster's dashboard (default: RAY_DASHBOARD_ADDRESS, else {DEFAULT_ADDRESS})")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return without following it")
    parser.add_argument("--pip", nargs="+", default=[], metavar="REQ", help="extra pip packages for the job")
    parser.add_argument("--env", nargs="+", default=[], metavar="KEY=VALUE", help="environment variables for the job")
    parser.add_argument("job", help=f"one of: {', '.join(job_names())}")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the vwe command, e.g. --config ...")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.env):
        parser.error(f"--env takes KEY=VALUE items, got {args.env}")

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    _check_token()
    from ray.job_submission import JobStatus, JobSubmissionClient

    env_vars = dict(item.split("=", 1) for item in args.env)
    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(entrypoint=entrypoint(args.job, args.args), runtime_env=runtime_env(args.pip, env_vars),
                               metadata={"vwe_job": args.job})
    print(f"submitted {args.job} as job {job_id} to {args.address}", flush=True)
    if args.no_wait:
        print(f"follow it with: ray job logs --address {args.address} --follow {job_id}")
        return 0
    asyncio.run(_print_logs(client, job_id))
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())

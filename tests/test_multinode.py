"""A real multi-node Ray cluster on this host, used as on a cloud: `ray start` processes for a head and for worker
nodes (a node on 127.0.0.2 looks like another host to Ray, so Train places ranks as on two machines), a run folder
that every node sees (the shared storage), and jobs submitted with jobs/submit.py through the Jobs API.

- the tiny pipeline runs as one job; training spans both nodes (STRICT_SPREAD) and the CRF tasks go to the node
  with the `crf_node` resource, as on the CPU workers of cluster.yaml;
- a worker node is killed during classifier training; a replacement joins (what the autoscaler does) and the job
  still succeeds, resumed from the checkpoint on the shared storage.

Token auth is off for these loopback-only clusters (RAY_AUTH_MODE=disabled); the shipped cluster.yaml keeps it on.
Only processes of this module's cluster are stopped: the process groups it started, then whatever still carries
its private --temp-dir in its command line. Never `ray stop` (it stops every Ray on the host).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vwe.stages import stages_of
from vwe.config import load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the packaged tiny config at half its size: 48 training images, 6 steps per epoch; 2 training workers, one per node
TINY = ["--config", "tiny", "--set", "synth.splits={train_aug: 48, train: 16, val: 16, test: 0}",
        "ray.num_workers=2", "ray.placement_strategy=STRICT_SPREAD"]
CLUSTER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # notice a dead node in ~3 s instead of ~15 s
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`ray start` nodes on this host, each in its own process group."""

    def __init__(self, shared: Path):
        self.shared = shared
        self.temp_dir = tempfile.mkdtemp(prefix="vwe-ray-")  # short: Ray's socket paths must stay < 108 bytes
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        # the jobs' `python` is this venv's; Ray's own State API clients inside the cluster must find this cluster
        # among the others on the host
        self.env = {**os.environ, **CLUSTER_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "RAY_API_SERVER_ADDRESS": self.dashboard}
        self.groups: dict[str, int] = {}  # node ip -> process group id

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, name: str, *args: str) -> None:
        log_path = Path(self.temp_dir) / f"start-{name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(BIN / "ray"), "start", "--disable-usage-stats", "--num-gpus=0",
                                     "--object-store-memory=80000000", f"--dashboard-agent-listen-port={free_port()}",
                                     *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.groups[name] = proc.pid
            if proc.wait(timeout=180) != 0:
                raise RuntimeError(f"ray start {name} failed: {log_path.read_text()}")

    def start_head(self) -> None:
        # the head also takes work here (2 CPUs); in cluster.yaml it has none
        self._ray_start("head", "--head", f"--port={self.gcs_port}", "--num-cpus=2", "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                        f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}")

    def add_node(self, ip: str) -> None:
        self._ray_start(ip, f"--address=127.0.0.1:{self.gcs_port}", f"--node-ip-address={ip}", "--num-cpus=2",
                        '--resources={"crf_node": 2}', f"--temp-dir={self.node_dir(ip)}")
        self.wait_for(lambda: ip in self.alive_ips(), f"node {ip} to join")

    def node_dir(self, ip: str) -> str:
        return f"{self.temp_dir}/{ip}"  # inside the head's: one prefix finds every process of this cluster

    def kill_node(self, ip: str) -> None:
        """SIGKILL everything of node `ip`, as if the machine had died."""
        os.killpg(self.groups.pop(ip), signal.SIGKILL)
        for proc in self._processes(self.node_dir(ip)):
            proc.kill()

    def alive_ips(self) -> set[str]:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, raise_on_missing_output=False)
        return {n.node_ip for n in nodes if n.state == "ALIVE"}

    def _processes(self, temp_dir: str | None = None) -> list:
        import psutil  # vendored by Ray

        marker = f"{temp_dir or self.temp_dir}/"
        return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]

    def shutdown(self) -> None:
        for pgid in self.groups.values():
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self._processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in self._processes():
            proc.kill()
        for pgid in self.groups.values():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @staticmethod
    def wait_for(condition, what: str, timeout: float = 120, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what}")
            time.sleep(poll)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    local = LocalCluster(tmp_path_factory.mktemp("shared"))
    try:
        local.start_head()
        local.add_node("127.0.0.2")
        yield local
    finally:
        local.shutdown()


def submit(cluster: LocalCluster, *args: str, wait: bool = True) -> subprocess.CompletedProcess | str:
    """Runs jobs/submit.py as a user would; returns the finished process, or the job id with wait=False."""
    command = [sys.executable, str(REPO / "jobs" / "submit.py"), "--address", cluster.dashboard,
               *([] if wait else ["--no-wait"]), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if not wait:
        assert done.returncode == 0, done.stderr
        return re.search(r"as job (\S+)", done.stdout).group(1)
    return done


def job_client(cluster: LocalCluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard)


def trainer_ips(cluster: LocalCluster, job_id: str) -> list[str]:
    """Node IPs of the Ray Train workers a job started (dead ones included)."""
    from ray.util.state import list_actors, list_nodes

    ips = {n.node_id: n.node_ip for n in list_nodes(address=cluster.dashboard, raise_on_missing_output=False)}
    actors = list_actors(address=cluster.dashboard, filters=[("class_name", "=", "RayTrainWorker"),
                                                             ("job_id", "=", job_id)], raise_on_missing_output=False)
    return sorted(ips[a.node_id] for a in actors)


def test_pipeline_job_runs_across_nodes(cluster):
    from ray.util.state import list_nodes, list_tasks

    out = cluster.shared / "tiny"
    done = submit(cluster, "pipeline", *TINY, f"out_dir={out}", "ray.crf_resource=crf_node")
    assert done.returncode == 0 and "SUCCEEDED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]

    cfg = load_config(out / "config.yaml")
    for stage in stages_of(cfg):
        assert stage.is_complete(cfg), f"stage {stage.name} left incomplete outputs"
    records = json.loads((out / "stages.json").read_text())
    assert [name for name, r in records.items() if not r["skipped"]] == [s.name for s in stages_of(cfg)]
    assert records["train_cam"]["result"]["step"] == 12

    job = next(j for j in job_client(cluster).list_jobs() if j.entrypoint.startswith("python jobs/pipeline.py"))
    ips = {n.node_id: n.node_ip for n in list_nodes(address=cluster.dashboard, raise_on_missing_output=False)}
    # a rank per node in each of the two training stages (classifier, DeepLab)
    assert len(ips) == 2 and trainer_ips(cluster, job.job_id) == sorted(list(ips.values()) * 2)
    crf = [t for t in list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job.job_id)], limit=10000)
           if "label_batch" in t.name]
    assert crf and {ips[t.node_id] for t in crf} == {"127.0.0.2"}  # only the node with the crf_node resource


def test_training_survives_losing_a_node(cluster):
    from vwe.data.synth import generate

    out = cluster.shared / "fault"
    generate(out / "VOC2012", {"train_aug": 48, "train": 16}, 64, 64, num_classes=20, seed=0)
    # 180 steps (about 20 s here), a checkpoint every 10
    job_id = submit(cluster, "train_cam", *TINY, f"out_dir={out}", f"data.root={out / 'VOC2012'}", "train.epochs=30",
                    "train.checkpoint_every=10", "train.log_every=10", wait=False)
    # Train's controller writes this file once it has registered a checkpoint (a checkpoint folder alone may not be
    # registered yet when the node dies, and then the run would rightly start over)
    registered = out / "ray" / "train_cam" / "checkpoint_manager_snapshot.json"
    cluster.wait_for(registered.is_file, "the first registered checkpoint", timeout=240, poll=0.1)
    cluster.kill_node("127.0.0.2")
    cluster.add_node("127.0.0.3")  # the replacement an autoscaler would launch

    client = job_client(cluster)
    cluster.wait_for(lambda: client.get_job_status(job_id).is_terminal(), "the job to end", timeout=300)
    logs = client.get_job_logs(job_id)
    assert client.get_job_status(job_id).value == "SUCCEEDED", logs[-3000:]
    result = json.loads(re.findall(r"^\{$.*?^\}$", logs, re.M | re.S)[-1])  # what `vwe train-cam` prints
    assert result["step"] == 180  # 30 epochs of 6 steps
    assert result["resumed_from"] > 0  # restarted from a checkpoint, not from scratch
    # two worker groups: the first on the head and 127.0.0.2, the second on the head and the replacement
    ips = trainer_ips(cluster, client.get_job_info(job_id).job_id)
    assert len(ips) == 4 and ips.count("127.0.0.2") == 1 and ips.count("127.0.0.3") == 1, ips
    assert (out / "classifier" / "model.pth").is_file()

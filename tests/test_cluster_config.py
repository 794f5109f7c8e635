"""cluster.yaml (AWS) and cluster-onprem.yaml (local provider) pass Ray's own validation and keep the cluster
closed: only SSH from outside, the dashboard on the head's loopback, token auth on, no training on the head."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster-onprem.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def ray_start_commands(cluster: dict) -> list[str]:
    return [c for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"] if "ray start" in c]


@pytest.mark.parametrize("name", FILES)
def test_ray_validates_the_cluster_file(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(name)))


def test_validation_catches_a_broken_file():
    """The check above can fail: a typo at the top level is rejected."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = load("cluster.yaml")
    broken["min_workrs"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_workrs"):
        validate_config(prepare_config(broken))


def test_aws_opens_only_ssh_to_the_outside():
    rules = load("cluster.yaml")["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    for rule in rules:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"])


@pytest.mark.parametrize("name", FILES)
def test_dashboard_listens_on_loopback_only(name):
    head = " ".join(load(name)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # reached through `ray dashboard <file>` (an SSH tunnel)
    assert "0.0.0.0" not in head


@pytest.mark.parametrize("name", FILES)
def test_token_auth_stays_on(name):
    cluster = load(name)
    commands = ray_start_commands(cluster)
    assert len(commands) == 2 and all("RAY_AUTH_MODE=token" in c for c in commands)
    assert "disabled" not in (REPO / name).read_text()
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", FILES)
def test_installs_a_pinned_commit(name):
    assert any("git+" in c and "@<PINNED_COMMIT>" in c for c in load(name)["setup_commands"])


def test_aws_head_runs_no_training_and_workers_autoscale():
    cluster = load("cluster.yaml")
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["GPU"] == 8 and types["gpu_worker"]["min_workers"] == 0
    assert types["cpu_worker"]["max_workers"] > types["cpu_worker"]["min_workers"]
    assert "crf_node" in types["cpu_worker"]["resources"] and "crf_node" not in types["gpu_worker"]["resources"]
    assert any("mount -t nfs4" in c for c in cluster["setup_commands"])  # the shared run folders


def test_onprem_head_runs_no_training_and_cpu_hosts_take_the_crf():
    cluster = load("cluster-onprem.yaml")
    assert cluster["provider"]["type"] == "local" and len(cluster["provider"]["worker_ips"]) >= 2
    head, worker = ray_start_commands(cluster)
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    assert '{"crf_node": 1}' in worker and "nvidia-smi" in worker

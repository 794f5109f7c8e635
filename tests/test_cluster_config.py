"""cluster.yaml passes Ray's own validation and keeps the cluster closed: SSH only, token auth on, no training
on the head."""
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_validates_cluster_yaml(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))


def test_only_ssh_is_open_to_the_outside(cluster):
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    for rule in rules:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"])
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # reached through `ray dashboard cluster.yaml` (SSH tunnel)
    assert "0.0.0.0" not in head


def test_token_auth_stays_on(cluster):
    for command in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert "disabled" not in CLUSTER.read_text()
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_head_runs_no_training_and_workers_autoscale(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["GPU"] == 8 and types["gpu_worker"]["min_workers"] == 0
    assert types["cpu_worker"]["max_workers"] > types["cpu_worker"]["min_workers"]
    assert any("@" in c and "git+" in c for c in cluster["setup_commands"])  # installs a pinned commit

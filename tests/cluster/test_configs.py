"""The shipped cluster configs are valid for Ray 2.60's autoscaler and say what the docs say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "cluster" / "configs"


def _load(name: str) -> Any:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_aws_config_validates_and_scales_on_session_slots() -> None:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = _load("aws.yaml")
    validate_config(fillout_defaults(config))  # what `ray up` does
    worker = config["available_node_types"]["sessions"]
    assert worker["resources"]["session_slot"] > 0 and worker["max_workers"] >= worker["min_workers"]
    assert config["available_node_types"][config["head_node_type"]]["resources"]["session_slot"] == 0
    assert config["idle_timeout_minutes"] > 0
    [start] = [cmd for cmd in config["head_start_ray_commands"] if "ray start --head" in cmd]
    assert "--port=" in start and "--port=6379" not in start  # Redis' port stays free


def test_fake_multinode_config_is_complete() -> None:
    from ray.autoscaler._private.util import validate_config

    config = _load("fake-multinode.yaml")
    validate_config(config)  # complete on its own: the wheel lacks fake_multi_node/example.yaml
    assert config["provider"]["type"] == "fake_multinode"
    assert config["available_node_types"]["ray.worker.sessions"]["resources"]["session_slot"] > 0


def test_kuberay_manifest_autoscales_a_session_slot_group() -> None:
    docs = list(yaml.safe_load_all((CONFIGS / "kuberay.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = json.loads(json.loads(spec["headGroupSpec"]["rayStartParams"]["resources"]))
    assert head == {"session_slot": 0}
    [group] = spec["workerGroupSpecs"]
    assert json.loads(json.loads(group["rayStartParams"]["resources"]))["session_slot"] > 0
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_kuberay_edges_are_probed_on_livez_and_readyz() -> None:
    docs = list(yaml.safe_load_all((CONFIGS / "kuberay.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pulseline-edge")
    [edge] = deployment["spec"]["template"]["spec"]["containers"]
    assert edge["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert edge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert edge["startupProbe"]["httpGet"]["path"] == "/livez"
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "pulseline-edge")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]

"""The container files (Dockerfile, deploy/): what can be checked without Docker here — the
image is slim, non-root and pinned, the compose stack has its five services wired to each
other, Prometheus scrapes both metric sources, every dashboard query names a family the
code exports, and the KubeRay example runs this image with its probes and metrics ports.
(The image itself is built by .ci/run where a Docker daemon answers.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_the_image_is_slim_non_root_and_pinned() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M) and "pip install -c deploy/constraints.txt ." in text
    assert "HEALTHCHECK" in text and "/livez" in text
    pins = [l for l in (DEPLOY / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins and all(re.match(r"^[A-Za-z0-9_.-]+==[\w.+]+$", l) for l in pins), [l for l in pins if "==" not in l]
    pinned = {l.split("==")[0].lower().replace("_", "-") for l in pins}
    assert {"ray", "uvicorn", "fastapi", "redis", "numpy", "prometheus-client"} <= pinned


def test_compose_runs_redis_ray_edge_prometheus_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "ray-head", "edge", "prometheus", "grafana"}
    edge = services["edge"]
    assert edge["image"] == services["ray-head"]["image"] and edge["command"] == ["edge"]
    assert edge["environment"]["RAY_ADDRESS"] == "ray-head:6380" and edge["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert "--metrics-export-port=8080" in services["ray-head"]["command"]
    mounts = services["grafana"]["volumes"]
    assert any(m.startswith("./grafana/dashboards:") for m in mounts) and any(m.startswith("./grafana/provisioning:") for m in mounts)
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"edge:9100", "ray-head:8080"}


def _exported_families() -> set[str]:
    """Every family name the code declares (edge: prometheus-client, actors: Ray, with Ray's prefix)."""
    names = set()
    for path in ("api/metrics.py", "api/scopes.py", "cluster/supervisor.py"):
        names |= set(re.findall(r'"(pulseline_[a-z_]+)"', (ROOT / path).read_text()))
    names |= {"ray_" + n for n in re.findall(r'"(pulseline_[a-z_]+)"', (ROOT / "actors/telemetry.py").read_text())}
    return names


def test_every_dashboard_panel_asks_about_families_the_code_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/pulseline.json").read_text())
    families = _exported_families()
    titles = [p["title"] for p in dashboard["panels"]]
    for question in ("Is any class slow?", "Are acks lagging?", "Is Redis healthy?", "How many riders?", "Where does CPU go?"):
        assert question in titles
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["description"]
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:ray_)?pulseline_[a-z_]+)", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base in families, (panel["title"], name)


def test_kuberay_runs_the_image_with_probes_and_metrics_ports() -> None:
    docs = list(yaml.safe_load_all((ROOT / "cluster/configs/kuberay.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    images |= {c["image"] for g in cluster["spec"]["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [edge] = deployment["spec"]["template"]["spec"]["containers"]
    assert images == {edge["image"]} and edge["image"].endswith(":0.1.0")
    assert edge["livenessProbe"]["httpGet"]["path"] == "/livez" and edge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"containerPort": 9100, "name": "metrics"} in edge["ports"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"

"""The operator's view of the cluster, as plain JSON-able data.

``cluster_status(namespace)`` (blocking; call it in a thread from async code) returns::

    {
      "nodes": [{"node_id", "address", "slots_total", "slots_used", "slots_free",
                 "sessions": [...], "cpus"}],
      "totals": {"nodes", "slots_total", "slots_used", "slots_free", "sessions"},
      "waiting_sessions": [{"session", "state", "restarts"}],   # no slot yet
      "autoscaler": {...} | None,
    }

Nodes, slots and sessions come from the GCS (``cluster.placement``). ``autoscaler`` is
what Ray's v1 autoscaler last published (the same data ``ray status`` prints): active,
idle, pending and failed nodes by type, pending launches, and the demand it sees — bundles
from actors waiting for resources (``resource_demand``) and from ``request_resources``
(``request_demand``). It is None when no autoscaler runs (a local stack, or KubeRay's v2
autoscaler, which publishes elsewhere).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cluster.placement import Placement, read_placement

log = logging.getLogger(__name__)


def _bundles(pairs: list[Any] | None) -> list[dict[str, Any]]:
    return [{"bundle": bundle, "count": count} for bundle, count in (pairs or [])]


def autoscaler_report() -> dict[str, Any] | None:
    """The v1 autoscaler's last published status, summarised; None if there is none."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not raw:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        log.warning("unreadable autoscaler status")
        return None
    load = status.get("load_metrics_report", {})
    report = status.get("autoscaler_report") or {}
    return {
        "time": status.get("time"),
        "active_nodes": report.get("active_nodes", {}),
        "idle_nodes": report.get("idle_nodes") or {},
        "pending_nodes": [{"ip": ip, "type": kind, "status": st} for ip, kind, st in report.get("pending_nodes", [])],
        "pending_launches": report.get("pending_launches", {}),
        "failed_nodes": [{"ip": ip, "type": kind} for ip, kind in report.get("failed_nodes", [])],
        "resource_demand": _bundles(load.get("resource_demand")),
        "request_demand": _bundles(load.get("request_demand")),
    }


def summarise(placement: Placement, autoscaler: dict[str, Any] | None) -> dict[str, Any]:
    nodes = [n.as_dict() for n in placement.nodes]
    return {
        "nodes": nodes,
        "totals": {
            "nodes": len(nodes),
            "slots_total": placement.slots_total,
            "slots_used": placement.slots_used,
            "slots_free": placement.slots_total - placement.slots_used,
            "sessions": sum(len(n.sessions) for n in placement.nodes),
        },
        "waiting_sessions": [
            {"session": w.session_id, "state": w.state, "restarts": w.restarts} for w in placement.waiting
        ],
        "autoscaler": autoscaler,
    }


def cluster_status(namespace: str) -> dict[str, Any]:
    return summarise(read_placement(namespace), autoscaler_report())


def format_status(status: dict[str, Any]) -> str:
    """A short human-readable table of ``cluster_status`` (the ``pulseline status`` CLI)."""
    t = status["totals"]
    lines = [f"{t['nodes']} nodes, session slots {t['slots_used']:g}/{t['slots_total']:g} used, {t['sessions']} sessions"]
    for n in status["nodes"]:
        sessions = ", ".join(n["sessions"]) or "-"
        lines.append(
            f"  …{n['node_id'][-10:]} {n['address']:<15} slots {n['slots_used']:g}/{n['slots_total']:g}  {sessions}"
        )
    if status["waiting_sessions"]:
        lines.append("waiting for a slot: " + ", ".join(w["session"] for w in status["waiting_sessions"]))
    auto = status.get("autoscaler")
    if auto:
        pending = sum(auto["pending_launches"].values()) + len(auto["pending_nodes"])
        demand = sum(d["count"] for d in auto["resource_demand"])
        requested = sum(d["count"] for d in auto["request_demand"])
        lines.append(
            f"autoscaler: active {auto['active_nodes']}, pending nodes {pending}, "
            f"demand {demand} bundles, requested {requested} bundles"
        )
    else:
        lines.append("autoscaler: none reporting")
    return "\n".join(lines)

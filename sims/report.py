"""Reports people can read: ``write_report(report, out_dir)`` writes ``report.json`` and PNG plots.

* ``latency.png`` — sample->board latency p50/p90/p99/p99.9/max per second of scheduled
  send time (log scale), with the 150 ms target;
* ``throughput.png`` — samples sent and durably acknowledged per second, and connections;
* ``accounting.png`` — sent / acknowledged / applied / rejected / lost / duplicated, and
  rejections by reason.

``merge_reports(reports)`` combines the full reports of several swarm processes (sums,
merged histograms, concatenated participants) into one. ``summary_text(report)`` is a
few human lines for a terminal. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sims.histogram import LatencyHistogram

__all__ = ["merge_reports", "summary_text", "write_report"]

TARGET_P99_MS = 150.0
_SUMMED = ("sent", "acknowledged", "applied", "rejected", "rejections_unreported", "lost", "duplicated", "rejected_unexpected",
           "devices", "riders", "device_streams", "connections", "sessions", "boards_received", "reconnects",
           "participants_mismatched", "latency_unseen")


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json`` and the plots into ``out_dir`` (created); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    paths.append(_plot_latency(report, out / "latency.png"))
    paths.append(_plot_throughput(report, out / "throughput.png"))
    paths.append(_plot_accounting(report, out / "accounting.png"))
    return paths


def _plot_latency(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    rows = [r for r in report.get("timeline", []) if r.get("latency_ms")]
    t = [r["t_s"] for r in rows]
    for key, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("p99_9", "--"), ("max", ":")):
        ax.plot(t, [r["latency_ms"][key] for r in rows], style, label=key.replace("_", "."))
    ax.axhline(TARGET_P99_MS, color="red", linewidth=0.8, label="150 ms target (p99)")
    ax.set_yscale("log")
    ax.set_xlabel("scheduled send time (s since class start)")
    ax.set_ylabel("sample -> board latency (ms)")
    overall = report.get("latency_ms", {})
    ax.set_title(f"{report.get('scenario', 'swarm')}: latency (overall p99 {overall.get('p99')} ms, "
                 f"max {overall.get('max')} ms, n={overall.get('samples')})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_throughput(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = report.get("timeline", [])
    t = [r["t_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [r["sent"] for r in rows], label="samples sent / s")
    ax.plot(t, [r["acked"] for r in rows], label="samples acknowledged (durable) / s")
    ax.set_xlabel("time (s since class start)")
    ax.set_ylabel("samples per second")
    ax2 = ax.twinx()
    ax2.plot(t, [r.get("connections") or 0 for r in rows], color="grey", linestyle=":", label="connections welcomed")
    ax2.set_ylabel("connections")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax.set_title(f"{report.get('scenario', 'swarm')}: throughput ({report.get('throughput_samples_per_s')} samples/s average)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_accounting(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    keys = ("sent", "acknowledged", "applied", "rejected", "lost", "duplicated")
    values = [report.get(k, 0) for k in keys]
    colors = ["#4c72b0", "#55a868", "#55a868", "#dd8452", "#c44e52", "#c44e52"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    bars = ax.bar(keys, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=8)
    ax.set_title(f"accounting: lost {report.get('lost')}, duplicated {report.get('duplicated')}")
    reasons = report.get("rejected_by_reason") or {"(none)": 0}
    bars2 = ax2.bar(list(reasons), list(reasons.values()), color="#dd8452")
    ax2.bar_label(bars2, fontsize=8)
    ax2.set_title("rejected by reason")
    for a in (ax, ax2):
        a.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several swarm processes' full reports (each with ``histograms``)."""
    if len(reports) == 1:
        return reports[0]
    merged: dict[str, Any] = {"scenario": reports[0].get("scenario"), "processes": len(reports)}
    for key in _SUMMED:
        merged[key] = sum(int(r.get(key, 0) or 0) for r in reports)
    for key in ("seconds",):
        merged[key] = max(float(r.get(key, 0) or 0) for r in reports)
    merged["drained"] = all(r.get("drained") for r in reports)
    merged["session_ids"] = [s for r in reports for s in r.get("session_ids", [])]
    merged["energy_max_abs_error_kj"] = max(r.get("energy_max_abs_error_kj", 0.0) for r in reports)
    for key in ("rejected_by_reason", "faults_injected", "server_frames"):
        total: Counter[str] = Counter()
        for r in reports:
            total.update(r.get(key, {}))
        merged[key] = dict(total)
    merged["lost_detail"] = dict(sum((Counter(r.get("lost_detail", {})) for r in reports), Counter()))
    pb: Counter[str] = Counter()
    for r in reports:
        pb.update(r.get("participant_boards", {}))
    merged["participant_boards"] = dict(pb)
    latency = LatencyHistogram()
    by_second: dict[int, LatencyHistogram] = defaultdict(LatencyHistogram)
    for r in reports:
        hists = r.get("histograms", {})
        latency.merge(LatencyHistogram.from_dict(hists.get("latency", {})))
        for s, h in hists.get("by_second", {}).items():
            by_second[int(s)].merge(LatencyHistogram.from_dict(h))
    merged["latency_ms"] = latency.summary()
    merged["swarm_lag_ms"] = {"p99_max_over_processes": max((r.get("swarm_lag_ms", {}).get("p99") or 0) for r in reports)}
    gcs = [r["swarm_gc"] for r in reports if r.get("swarm_gc")]
    if gcs:
        merged["swarm_gc"] = {"collections": [sum(g["collections"][k] for g in gcs) for k in range(3)],
                              "pause_ms": [round(sum(g["pause_ms"][k] for g in gcs), 1) for k in range(3)],
                              "longest_ms": max(g["longest_ms"] for g in gcs)}
    merged["throughput_samples_per_s"] = round(sum(r.get("throughput_samples_per_s") or 0 for r in reports), 1)
    merged["timeline"] = _merge_timelines(reports, by_second)
    merged["participants"] = [p for r in reports for p in r.get("participants", [])]
    merged["histograms"] = {"latency": latency.to_dict(),
                            "by_second": {str(s): h.to_dict() for s, h in sorted(by_second.items())}}
    return merged


def _merge_timelines(reports: list[dict[str, Any]], by_second: dict[int, LatencyHistogram]) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for r in reports:
        for row in r.get("timeline", []):
            m = rows.setdefault(row["t_s"], {"t_s": row["t_s"], "sent": 0, "acked": 0, "connections": 0})
            m["sent"] += row.get("sent", 0)
            m["acked"] += row.get("acked", 0)
            m["connections"] += row.get("connections") or 0
    for s, row in rows.items():
        row["latency_ms"] = by_second[s].summary() if s in by_second else None
    return [rows[s] for s in sorted(rows)]


def summary_text(report: dict[str, Any]) -> str:
    lat = report.get("latency_ms", {})
    lines = [
        f"scenario {report.get('scenario')}: {report.get('riders', report.get('devices'))} riders, "
        f"{report.get('device_streams', '?')} devices, {report.get('connections', '?')} connections, "
        f"{report.get('seconds')} s",
        f"  sent {report.get('sent'):,}  acknowledged {report.get('acknowledged'):,}  applied {report.get('applied'):,}  "
        f"rejected {report.get('rejected'):,} {report.get('rejected_by_reason') or ''}",
        f"  lost {report.get('lost')}  duplicated {report.get('duplicated')}  drained {report.get('drained')}  "
        f"energy error {report.get('energy_max_abs_error_kj')} kJ",
        f"  latency ms  p50 {lat.get('p50')}  p90 {lat.get('p90')}  p99 {lat.get('p99')}  "
        f"p99.9 {lat.get('p99_9')}  max {lat.get('max')}  (n={lat.get('samples')})",
    ]
    if report.get("faults_injected"):
        lines.append(f"  faults injected {report['faults_injected']}")
    return "\n".join(lines)

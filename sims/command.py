"""``pulseline swarm [SCENARIO]``: run a scenario file (or the flag-built swarm) against an edge.

With a scenario, the file decides everything but the edge (``--url``); the flags
``--sessions/--devices/...`` apply only without one. Prints the JSON summary on stdout
(and to ``--report``), a short human summary and a progress bar on stderr, and writes
``report.json`` + PNG plots to ``--out`` (for scenarios, by default
``.pulseline/reports/<scenario>-<time>/``). Exit status 0 iff lost == 0 and duplicated == 0
and every sample was acknowledged.

A scenario with ``mode = "ble"`` runs ``sims.ble_swarm.BleStudio`` instead (simulated GATT
sensors through the bridge): same JSON on stdout, ``report.json`` only (no plots), and
exit status 0 iff lost == 0, duplicated == 0, drained, and every rider's hr/power
averages are within tolerance of the simulated sensors' generating values.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sims.report import summary_text, write_report
from sims.scenario import ScenarioError, load
from sims.replay import ReplaySwarm
from sims.swarm import Swarm

__all__ = ["swarm_command"]


def swarm_command(args: Any, swarm_config: Callable[[Any, str], Any],
                  emit: Callable[[dict[str, Any], str | None], None]) -> int:
    out = getattr(args, "out", None)
    scenario_path = getattr(args, "scenario", None)
    if scenario_path:
        try:
            scenario = load(scenario_path)
        except ScenarioError as exc:
            print(f"pulseline swarm: {exc}", file=sys.stderr)
            return 2
        out = out or f".pulseline/reports/{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"pulseline swarm: {scenario.name}: {scenario.description}", file=sys.stderr, flush=True)
        if scenario.mode == "ble":
            return _ble(scenario.ble_config(args.url), args, out, emit)
        config = scenario.swarm_config(args.url, progress=True)
    else:
        config = swarm_config(args, args.url)
        config.progress = True  # a bar on a terminal, a plain line every 10 s otherwise (sims.progress)
    config.settle_gc = True  # this process is the swarm's alone (sims.swarm._settle_collector)
    on_demand = scenario.on_demand if scenario_path else None
    swarm: Any = Swarm(config) if on_demand is None else ReplaySwarm(config, **on_demand)
    summary = asyncio.run(swarm.run())
    emit(summary, args.report)
    print(summary_text(summary), file=sys.stderr, flush=True)
    if out:
        paths = write_report(swarm.report(), Path(out))
        print(f"pulseline swarm: report in {paths[0].parent}/ ({', '.join(p.name for p in paths)})", file=sys.stderr)
    ok = summary["lost"] == 0 and summary["duplicated"] == 0 and summary["drained"]
    return 0 if ok else 1


def _ble(config: Any, args: Any, out: str, emit: Callable[[dict[str, Any], str | None], None]) -> int:
    from sims.ble_swarm import BleStudio, summary_text as ble_text

    summary = asyncio.run(BleStudio(config).run())
    emit(summary, args.report)
    print(ble_text(summary), file=sys.stderr, flush=True)
    path = Path(out) / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"pulseline swarm: report in {path}", file=sys.stderr)
    ok = summary["lost"] == 0 and summary["duplicated"] == 0 and summary["drained"] and summary["averages_ok"]
    return 0 if ok else 1

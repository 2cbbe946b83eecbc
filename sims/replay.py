"""Swarms against on-demand replay (issue 16): a class airs, ends, and is ridden on demand.

``ReplaySwarm(config, riders=N, seconds=S)`` runs the scenario's swarm as usual (the classes
air: riders ride, the swarm ends them), then makes each class's on-demand class
(``POST /v1/sessions/{id}/on-demand``) and runs a second swarm of ``N`` riders for ``S``
seconds on those (``{id}:od``), racing the recorded riders. Its summary is the on-demand
swarm's (its accounting must be exact too), with a ``replay`` block: per on-demand class the
recorded riders the server built, how many riders and rider-boards carried a
``replay_rank``, and the aired swarm's own accounting (``aired``). ``report()`` is the
on-demand swarm's report with the same block.

A scenario's ``[on_demand]`` table (``riders``, ``seconds``) asks for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sims.errors import SimsError
from sims.swarm import EdgeHttp, Swarm, SwarmConfig

__all__ = ["ReplaySwarm"]

_AIRED = ("sent", "acknowledged", "applied", "lost", "duplicated", "drained", "riders")


class ReplaySwarm:
    def __init__(self, config: SwarmConfig, *, riders: int, seconds: float) -> None:
        self.config = config
        self.riders = riders
        self.seconds = seconds
        self.aired: Swarm | None = None
        self.on_demand: Swarm | None = None
        self._block: dict[str, Any] = {}

    async def run(self) -> dict[str, Any]:
        self.aired = Swarm(self.config)
        aired = await self.aired.run()
        made = await self._make_on_demand(self.aired)
        od = dataclasses.replace(self.config, session_ids=tuple(made), devices=self.riders, seconds=self.seconds,
                                 phases=False, name=f"{self.config.name}-on-demand", faults=None, capacity=None,
                                 in_class=0.0, class_plan=None, join_window_s=0.0, surges=())
        self.on_demand = Swarm(od)
        summary = await self.on_demand.run()
        viewers = self.on_demand.viewers
        self._block = {
            "classes": {sid: {"recorded_by_server": n, "recorded_on_boards": viewers[sid].replay_recorded}
                        for sid, n in made.items() if sid in viewers},
            "riders_ranked": len(set().union(*(v.replay_ranked for v in viewers.values()))) if viewers else 0,
            "rider_boards_ranked": sum(v.replay_rank_boards for v in viewers.values()),
            "aired": {k: aired.get(k) for k in _AIRED},
        }
        summary["replay"] = self._block
        return summary

    async def _make_on_demand(self, aired: Swarm) -> dict[str, int]:
        """Each aired class's on-demand class id -> the recorded riders the server built."""
        http = EdgeHttp(self.config.urls, {"Authorization": f"Bearer {aired.operator_token}"})
        made: dict[str, int] = {}
        try:
            for sid in aired.sessions:
                response = await http.request("POST", f"/v1/sessions/{sid}/on-demand")
                if response is None or response.status_code != 201:
                    detail = "no edge answered" if response is None else f"{response.status_code} {response.text[:200]}"
                    raise SimsError(f"on-demand class of {sid}: {detail}")
                body = response.json()
                made[body["id"]] = int(body["replay"].get("recorded", 0))
        finally:
            await http.aclose()
        return made

    def report(self) -> dict[str, Any]:
        if self.on_demand is None:
            raise RuntimeError("run() first")
        return {**self.on_demand.report(), "replay": self._block}

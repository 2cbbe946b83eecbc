"""On-demand replay: riding a class after it aired, against its recorded riders.

An on-demand class (its own session, ``{id}:od``, made by ``POST /v1/sessions/{id}/on-demand``
once ``{id}`` has ended) is an ordinary class — same actors, same protocol, same board —
plus a ``Replay``: the recorded riders of the original class as *ghosts*, each one's
cumulative output (kJ) at every second of the class, built once from the original class's
per-second recording (``actors.recording``: power per second; a second without power adds
nothing) and the time it went live (``ClassClock.live_at``; else the recording's first
second).

Each on-demand rider has its own offset into the class: seconds since its first sample
reached this class (the server's clock; a rider who pauses keeps counting, as the video
does). Its ``replay_rank`` is where its output stands among the ghosts **at that same
offset** and everyone riding the replay now (at their current output): ``1 + ghosts ahead
of it at its offset + riders here now ahead of it``, out of ``replay_n`` (ghosts + riders
here now). So the historical board moves as it did live, and riders here now race each
other too. Past the end of the class, the ghosts keep their final output.

Work per board: one gather ``kj[:, offsets]`` (ghosts x riders on the board) and a
comparison — numpy, no Python per rider. Survives a restart: the checkpoint keeps the
source's id and each rider's start; the ghosts are rebuilt from the source's recording
(``SessionCell``), which lives as long as the source class's retention.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.errors import ActorError
from actors.recording import Recording

__all__ = ["REPLAY_COLUMNS", "Replay", "ReplayError", "replay_keys"]


class ReplayError(ActorError):
    """The class to ride on demand has no recording (never ran, or its retention is over)."""


def replay_keys(base: str) -> tuple[str, str]:
    """The source class's checkpoint and recording keys, from its ``key_base``."""
    return f"{base}:ckpt", f"{base}:rec"

REPLAY_COLUMNS = ("replay_rank", "offset_s")


class Replay:
    def __init__(self, source: str, names: list[str], kj: np.ndarray, *, capacity: int = 16) -> None:
        self.source = source
        self.names = names  # the ghosts (the recorded riders with any power)
        self.kj = kj  # (ghosts, seconds): cumulative output at the end of each second
        self.start = np.full(capacity, np.nan)  # per on-demand rider: server time of its first sample

    @property
    def class_s(self) -> int:
        return int(self.kj.shape[1])

    @classmethod
    def of_recording(cls, source: str, participants: list[str], recording: Recording,
                     live_at: float | None) -> Replay:
        """Ghosts from a class's recording: second 0 is ``live_at`` (else the first recorded)."""
        slots = list(range(min(recording.used, len(participants))))
        series = recording.series_many(slots) if slots else []
        if recording.t0 is None or not series:
            return cls(source, [], np.zeros((0, 1)))
        origin = int(live_at) if live_at is not None else recording.t0
        first = recording.t0 - origin
        ends = [first + int(s.t[-1]) + 1 for s in series if len(s)]
        length = max(1, max(ends, default=1))
        names, rows = [], []
        for slot, s in zip(slots, series, strict=True):
            power = np.nan_to_num(s.values["power_w"], nan=0.0) if len(s) else np.zeros(0)
            if not power.any():
                continue
            at = first + s.t.astype(np.int64)
            keep = (at >= 0) & (at < length)  # (seconds before the start: the lobby, not the class)
            per_second = np.zeros(length)
            np.add.at(per_second, at[keep], power[keep] / 1000.0)
            names.append(participants[slot])
            rows.append(np.cumsum(per_second))
        kj = np.vstack(rows) if rows else np.zeros((0, length))
        return cls(source, names, kj)

    def grow(self, capacity: int, used: int) -> None:
        start = np.full(capacity, np.nan)
        start[:used] = self.start[:used]
        self.start = start

    def note(self, slots: np.ndarray, now: float) -> None:
        """Riders whose samples were applied now: the first time starts their clock."""
        fresh = slots[np.isnan(self.start[slots])]
        if len(fresh):
            self.start[fresh] = now

    def offsets(self, order: np.ndarray, now: float) -> np.ndarray:
        """Whole seconds into the class of each rider in ``order`` (NaN: not started)."""
        return np.floor(now - self.start[order])  # type: ignore[no-any-return]

    def ranks(self, order: np.ndarray, energy_kj: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(``replay_rank``, ``offset_s``) of the riders in ``order`` — ranked here-now by
        energy, descending, as the board is — NaN for riders not started."""
        offset = self.offsets(order, now)
        started = ~np.isnan(offset)
        at = np.clip(np.nan_to_num(offset, nan=0.0), 0, self.class_s - 1).astype(np.int64)
        ghosts_ahead = (self.kj[:, at] > energy_kj[order][None, :]).sum(0) if len(self.names) else np.zeros(len(order))
        rank = np.where(started, ghosts_ahead + np.arange(1, len(order) + 1), np.nan)
        return rank, np.where(started, offset, np.nan)

    def ghosts_at(self, offset: int, k: int) -> list[list[Any]]:
        """The ``k`` leading ghosts at ``offset``: ``[name, kJ]`` (what a screen shows)."""
        if not self.names:
            return []
        column = self.kj[:, int(np.clip(offset, 0, self.class_s - 1))]
        best = np.argsort(-column, kind="stable")[:k]
        return [[self.names[i], round(float(column[i]), 4)] for i in best]

    def block(self, riders_here: int) -> dict[str, Any]:
        """The board's ``replay`` block."""
        return {"of": self.source, "recorded": len(self.names), "here_now": riders_here, "class_s": self.class_s}

    def to_checkpoint(self, n: int) -> dict[str, Any]:
        return {"source": self.source, "start": self.start[:n].tobytes()}

    def restore_starts(self, raw: dict[str, Any], n: int) -> None:
        self.start[:n] = np.frombuffer(raw["start"], dtype=np.float64)[:n]

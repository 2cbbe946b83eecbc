"""A tick's samples applied as numpy columns: no Python per sample.

``DeviceTable`` holds every device's cursor as arrays indexed by device number (slot of its
participant, ``contig``: every seq up to it applied or rejected, ``baseline``: the device
timestamp energy is integrated from, NaN before the first valid sample) plus the pending
set (seqs applied above a gap, waiting for it to fill) as four parallel arrays.

``apply_tick`` applies one tick with the semantics of the per-sample algorithm it replaced
(``SessionState``'s docstring; the property tests in ``tests/actors/test_session_columnar.py``
compare both on random ticks):

* items are processed in *position* order (rejected seqs of a device before its samples);
  an item whose (device, seq) is at or below ``contig``, pending, or earlier in the tick is a
  duplicate (a duplicate sample is counted, a duplicate rejected seq is ignored);
* a device whose pending set could reach ``max_pending`` within this tick is first walked
  item by item to find the samples the cap refuses (not applied, not counted: the device
  resends them) -- the one place with a loop per item, reached only by a device thousands of
  seqs ahead of a gap;
* samples update the participant's columns: sums and counts (``bincount``), maxima
  (``fmax.at``), ``last_ts`` and latest values (a sample is *newest* when its timestamp is
  at least every earlier one of the participant: a segmented running maximum over ranks);
* placement: the device's consecutive seqs from ``contig + 1`` advance it; each valid one
  earns ``power * clamp(ts - baseline, 0, max_gap_s)`` where the baseline is the running
  maximum timestamp of the valid seqs before it (again a segmented running maximum); the
  rest stay pending.

Floating-point sums are added per tick (``bincount``) rather than sample by sample, so
totals can differ from a sequential sum in the last bits (relative ~1e-15).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_LATEST = (("hr_bpm", 1), ("power_w", 2), ("cadence_rpm", 3), ("speed_mps", 4))


@dataclass(slots=True)
class DeviceCursor:
    """One device's cursor, as a plain object (a copy: see ``DeviceTable.cursor``)."""

    slot: int
    contig: int = 0
    ts_contig: float | None = None
    # seq -> (ts, power) of applied samples above contig; ts None marks a rejected seq.
    pending: dict[int, tuple[float | None, float]] = field(default_factory=dict)

    def seen(self, seq: int) -> bool:
        return seq <= self.contig or seq in self.pending


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    # the applied samples: their participant slots and value rows (for ``actors.metrics``)
    slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False, repr=False)
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)), compare=False, repr=False)


class DeviceTable:
    """Every device's cursor as arrays (see the module docstring)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.slot = np.zeros(16, np.int64)
        self.contig = np.zeros(16, np.int64)
        self.baseline = np.full(16, np.nan)
        self.p_device = np.zeros(0, np.int64)
        self.p_seq = np.zeros(0, np.int64)
        self.p_ts = np.zeros(0)  # NaN: a rejected seq
        self.p_power = np.zeros(0)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, slot: int) -> int:
        number = len(self.names)
        if number >= len(self.slot):
            grow = 2 * len(self.slot)
            self.slot = np.concatenate([self.slot, np.zeros(grow - len(self.slot), np.int64)])
            self.contig = np.concatenate([self.contig, np.zeros(grow - len(self.contig), np.int64)])
            self.baseline = np.concatenate([self.baseline, np.full(grow - len(self.baseline), np.nan)])
        self.names.append(name)
        self.index[name] = number
        self.slot[number] = slot
        return number

    def applied_seqs(self) -> dict[str, int]:
        return dict(zip(self.names, self.contig[: len(self.names)].tolist(), strict=True))

    def cursor(self, number: int) -> DeviceCursor:
        mine = self.p_device == number
        base = float(self.baseline[number])
        pending = {
            int(s): (None if np.isnan(t) else float(t), float(p))
            for s, t, p in zip(self.p_seq[mine], self.p_ts[mine], self.p_power[mine], strict=True)
        }
        return DeviceCursor(int(self.slot[number]), int(self.contig[number]), None if np.isnan(base) else base, pending)

    def to_lists(self) -> dict[str, list[Any]]:
        """Every cursor as ``[slot, contig, ts or None, [[seq, ts or None, power], ...]]``
        (the checkpoint's layout), built from the arrays in bulk."""
        n = len(self.names)
        baseline = self.baseline[:n].astype(object)
        baseline[np.isnan(self.baseline[:n])] = None
        pending: list[list[list[Any]]] = [[] for _ in range(n)]
        if len(self.p_device):
            ts = self.p_ts.astype(object)
            ts[np.isnan(self.p_ts)] = None
            for number, seq, t, power in zip(self.p_device.tolist(), self.p_seq.tolist(), ts.tolist(),
                                             self.p_power.tolist(), strict=True):
                pending[number].append([seq, t, power])
        rows = zip(self.slot[:n].tolist(), self.contig[:n].tolist(), baseline.tolist(), pending, strict=True)
        return {name: [slot, contig, base, waiting] for name, (slot, contig, base, waiting) in zip(self.names, rows, strict=True)}

    def cursors(self) -> dict[str, DeviceCursor]:
        return {name: self.cursor(number) for number, name in enumerate(self.names)}

    def restore(self, name: str, slot: int, contig: int, ts: float | None,
                pending: Sequence[tuple[int, float | None, float]]) -> None:
        number = self.add(name, slot)
        self.contig[number] = contig
        self.baseline[number] = np.nan if ts is None else ts
        if pending:
            self._append_pending(
                np.full(len(pending), number, np.int64), np.array([p[0] for p in pending], np.int64),
                np.array([np.nan if p[1] is None else p[1] for p in pending]), np.array([p[2] for p in pending], float),
            )

    def _append_pending(self, device: np.ndarray, seq: np.ndarray, ts: np.ndarray, power: np.ndarray) -> None:
        self.p_device = np.concatenate([self.p_device, device])
        self.p_seq = np.concatenate([self.p_seq, seq])
        self.p_ts = np.concatenate([self.p_ts, ts])
        self.p_power = np.concatenate([self.p_power, power])

    def _take_pending(self, touched: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return the pending entries of the ``touched`` devices."""
        if not len(self.p_device):
            return self.p_device, self.p_seq, self.p_ts, self.p_power
        mine = np.isin(self.p_device, np.unique(touched))
        taken = self.p_device[mine], self.p_seq[mine], self.p_ts[mine], self.p_power[mine]
        keep = ~mine
        self.p_device, self.p_seq = self.p_device[keep], self.p_seq[keep]
        self.p_ts, self.p_power = self.p_ts[keep], self.p_power[keep]
        return taken


@dataclass(frozen=True, slots=True)
class TickColumns:
    """The items of one tick in global device numbers. Positions give processing order."""

    sample_device: np.ndarray  # int64 device numbers
    seq: np.ndarray
    values: np.ndarray  # (n, 6): ts, hr, power, cadence, speed, distance (NaN: absent)
    rejected_device: np.ndarray
    rejected_seq: np.ndarray
    sample_pos: np.ndarray
    rejected_pos: np.ndarray


def apply_tick(cols: dict[str, np.ndarray], table: DeviceTable, tick: TickColumns, *,
               max_gap_s: float, max_pending: int) -> ApplyResult:
    """Apply one tick to the participant columns ``cols`` and the device ``table``."""
    m, n = len(tick.rejected_seq), len(tick.seq)
    if not m + n:
        return ApplyResult()
    dev = np.concatenate([tick.rejected_device, tick.sample_device]).astype(np.int64, copy=False)
    seq = np.concatenate([tick.rejected_seq, tick.seq]).astype(np.int64, copy=False)
    pos = np.concatenate([tick.rejected_pos, tick.sample_pos]).astype(np.int64, copy=False)
    is_row = np.concatenate([np.zeros(m, bool), np.ones(n, bool)])
    pending = table._take_pending(dev)
    seen = _duplicates(dev, seq, pos, table.contig, pending[0], pending[1])
    refused = _capped(dev, seq, pos, is_row, table, pending, max_pending, seen)
    winner = ~seen & ~refused
    result = ApplyResult(
        applied=int(np.count_nonzero(winner & is_row)),
        duplicates=int(np.count_nonzero(seen & is_row)),
        rejected=int(np.count_nonzero(winner & ~is_row)),
    )
    size = len(cols["samples"])
    won_rejected = winner[:m]
    if result.rejected:
        cols["rejected"] += np.bincount(table.slot[dev[:m][won_rejected]], minlength=size)
    won_rows = winner[m:]
    values = tick.values[won_rows]
    if result.applied:
        result.slot = table.slot[dev[m:][won_rows]]
        result.values = values
        _record(cols, result.slot, pos[m:][won_rows], values, size)
    ts = np.concatenate([np.full(int(won_rejected.sum()), np.nan), values[:, 0]])
    power = np.concatenate([np.zeros(int(won_rejected.sum())), np.nan_to_num(values[:, 2], nan=0.0)])
    _place(cols, table, np.concatenate([dev[:m][won_rejected], dev[m:][won_rows]]),
           np.concatenate([seq[:m][won_rejected], seq[m:][won_rows]]), ts, power, pending, max_gap_s, size)
    return result


def _duplicates(dev: np.ndarray, seq: np.ndarray, pos: np.ndarray, contig: np.ndarray,
                p_dev: np.ndarray, p_seq: np.ndarray) -> np.ndarray:
    """Items already applied, pending, or repeated earlier in the tick (first one wins)."""
    seen = seq <= contig[dev]
    all_dev = np.concatenate([p_dev, dev])
    all_seq = np.concatenate([p_seq, seq])
    all_pos = np.concatenate([np.full(len(p_dev), -1, np.int64), pos])
    order = np.lexsort((all_pos, all_seq, all_dev))
    d, s = all_dev[order], all_seq[order]
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (d[1:] == d[:-1]) & (s[1:] == s[:-1])
    again = np.empty(len(order), bool)
    again[order] = repeat
    return seen | again[len(p_dev):]  # type: ignore[no-any-return]


def _capped(dev: np.ndarray, seq: np.ndarray, pos: np.ndarray, is_row: np.ndarray, table: DeviceTable,
            pending: tuple[np.ndarray, ...], max_pending: int, seen: np.ndarray) -> np.ndarray:
    """Samples the pending cap refuses; ``seen`` is corrected in place for those devices."""
    refused = np.zeros(len(seq), bool)
    if len(seq) + len(pending[0]) <= max_pending:  # no device can reach the cap
        return refused
    size = len(table)
    load = np.bincount(dev, minlength=size) + np.bincount(pending[0], minlength=size)
    risky = np.flatnonzero(load > max_pending)
    for number in risky.tolist():
        mine = np.flatnonzero(dev == number)
        mine = mine[np.argsort(pos[mine], kind="stable")]
        contig = int(table.contig[number])
        waiting = set(pending[1][pending[0] == number].tolist())
        for item, s, row in zip(mine.tolist(), seq[mine].tolist(), is_row[mine].tolist(), strict=True):
            seen[item] = s <= contig or s in waiting
            if seen[item]:
                continue
            if row and len(waiting) >= max_pending and s != contig + 1:
                refused[item] = True
            elif s == contig + 1:
                contig += 1
                while contig + 1 in waiting:
                    waiting.discard(contig + 1)
                    contig += 1
            else:
                waiting.add(s)
    return refused


def _distinct(keys: np.ndarray) -> bool:
    if len(keys) < 2:
        return True
    ordered = np.sort(keys)
    return not bool((ordered[1:] == ordered[:-1]).any())


def _group_starts(keys: np.ndarray) -> np.ndarray:
    start = np.ones(len(keys), bool)
    start[1:] = keys[1:] != keys[:-1]
    return start


def _record(cols: dict[str, np.ndarray], slot: np.ndarray, pos: np.ndarray, values: np.ndarray, size: int) -> None:
    if _distinct(slot):  # the usual tick: at most one sample per participant
        _record_distinct(cols, slot, values)
        return
    order = np.lexsort((pos, slot))
    slot, values = slot[order], values[order]
    ts = values[:, 0]
    cols["samples"] += np.bincount(slot, minlength=size)
    for total, count, k in (("hr_sum", "hr_n", 1), ("power_sum", "power_n", 2), ("cadence_sum", "cadence_n", 3)):
        present = ~np.isnan(values[:, k])
        cols[total] += np.bincount(slot, weights=np.where(present, values[:, k], 0.0), minlength=size)
        cols[count] += np.bincount(slot[present], minlength=size)
    for name, k in (("hr_max", 1), ("power_max", 2), ("speed_max", 4), ("distance_m", 5)):
        np.fmax.at(cols[name], slot, values[:, k])
    start = _group_starts(slot)
    group = np.cumsum(start) - 1
    ranks = np.unique(ts, return_inverse=True)[1].reshape(-1)
    key = group * (int(ranks.max()) + 1) + ranks
    newest = (key == np.maximum.accumulate(key)) & ~(ts < cols["last_ts"][slot])
    np.fmax.at(cols["last_ts"], slot, ts)
    for name, k in _LATEST:
        _set_latest(cols[name], slot, values[:, k], newest)


def _record_distinct(cols: dict[str, np.ndarray], slot: np.ndarray, values: np.ndarray) -> None:
    """``_record`` when no participant has two samples in the tick: plain fancy indexing."""
    present = ~np.isnan(values)
    cols["samples"][slot] += 1
    for total, count, k in (("hr_sum", "hr_n", 1), ("power_sum", "power_n", 2), ("cadence_sum", "cadence_n", 3)):
        cols[total][slot] += np.where(present[:, k], values[:, k], 0.0)
        cols[count][slot] += present[:, k]
    for name, k in (("hr_max", 1), ("power_max", 2), ("speed_max", 4), ("distance_m", 5)):
        cols[name][slot] = np.fmax(cols[name][slot], values[:, k])
    ts = values[:, 0]
    newest = ~(ts < cols["last_ts"][slot])
    cols["last_ts"][slot] = np.fmax(cols["last_ts"][slot], ts)
    for name, k in _LATEST:
        column = cols[name]
        take = present[:, k] & (newest | np.isnan(column[slot]))
        column[slot[take]] = values[take, k]


def _set_latest(column: np.ndarray, slot: np.ndarray, value: np.ndarray, newest: np.ndarray) -> None:
    """A value replaces the latest when its sample is newest, or when none was ever seen."""
    present = np.flatnonzero(~np.isnan(value))
    if not len(present):
        return
    first = np.zeros(len(slot), bool)
    first[present[_group_starts(slot[present])]] = True
    candidate = np.flatnonzero(~np.isnan(value) & (newest | (first & np.isnan(column[slot]))))
    if not len(candidate):
        return
    last = np.ones(len(candidate), bool)
    last[:-1] = slot[candidate][1:] != slot[candidate][:-1]
    chosen = candidate[last]
    column[slot[chosen]] = value[chosen]


def _place(cols: dict[str, np.ndarray], table: DeviceTable, dev: np.ndarray, seq: np.ndarray, ts: np.ndarray,
           power: np.ndarray, pending: tuple[np.ndarray, ...], max_gap_s: float, size: int) -> None:
    """Advance cursors over consecutive seqs, credit energy, keep the rest pending."""
    dev = np.concatenate([pending[0], dev])
    seq = np.concatenate([pending[1], seq])
    ts = np.concatenate([pending[2], ts])
    power = np.concatenate([pending[3], power])
    if not len(seq):
        return
    if not len(pending[0]) and _distinct(dev):  # the usual tick: one new seq per device, no gap
        _place_distinct(cols, table, dev, seq, ts, power, max_gap_s)
        return
    order = np.lexsort((seq, dev))
    dev, seq, ts, power = dev[order], seq[order], ts[order], power[order]
    start = _group_starts(dev)
    first = np.flatnonzero(start)
    rank_in_group = np.arange(len(seq)) - first[np.cumsum(start) - 1]
    advanced = seq - rank_in_group == table.contig[dev] + 1
    rest = ~advanced
    if rest.any():
        table._append_pending(dev[rest], seq[rest], ts[rest], power[rest])
    if not advanced.any():
        return
    dev, ts, power = dev[advanced], ts[advanced], power[advanced]
    credit, valid = _energy(dev, ts, power, table.baseline[dev], max_gap_s)
    cols["energy_kj"] += np.bincount(table.slot[dev], weights=credit, minlength=size)
    np.fmax.at(table.baseline, dev[valid], ts[valid])
    np.add.at(table.contig, dev, 1)


def _place_distinct(cols: dict[str, np.ndarray], table: DeviceTable, dev: np.ndarray, seq: np.ndarray,
                    ts: np.ndarray, power: np.ndarray, max_gap_s: float) -> None:
    """``_place`` when every device has one entry and none has pending seqs."""
    advanced = seq == table.contig[dev] + 1
    rest = ~advanced
    if rest.any():
        table._append_pending(dev[rest], seq[rest], ts[rest], power[rest])
    dev, ts, power = dev[advanced], ts[advanced], power[advanced]
    base = table.baseline[dev]
    dt = np.minimum(np.maximum(ts - base, 0.0), max_gap_s)
    credit = np.where(~np.isnan(ts) & ~np.isnan(base), power * dt / 1000.0, 0.0)
    np.add.at(cols["energy_kj"], table.slot[dev], credit)
    table.baseline[dev] = np.fmax(base, ts)
    table.contig[dev] += 1


def _energy(dev: np.ndarray, ts: np.ndarray, power: np.ndarray, baseline: np.ndarray,
            max_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per advanced seq (sorted by device, seq): its energy credit, and whether it is valid."""
    valid = ~np.isnan(ts)
    known = np.unique(np.concatenate([ts[valid], baseline[~np.isnan(baseline)]]))
    width = len(known) + 1
    rank = np.where(valid, np.searchsorted(known, ts) + 1, 0)  # 0: no timestamp
    base_rank = np.where(np.isnan(baseline), 0, np.searchsorted(known, baseline) + 1)
    start = _group_starts(dev)
    group = np.cumsum(start) - 1
    running = np.maximum.accumulate(group * width + rank)
    before = np.empty(len(ts), np.int64)
    before[1:] = running[:-1]
    before[start] = group[start] * width
    previous = np.maximum(before - group * width, base_rank)
    credited = valid & (previous > 0)
    prev_ts = known[np.maximum(previous - 1, 0)] if len(known) else np.zeros(len(ts))
    dt = np.minimum(np.maximum(ts - prev_ts, 0.0), max_gap_s)
    return np.where(credited, power * dt / 1000.0, 0.0), valid


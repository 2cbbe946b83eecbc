"""Live training metrics per rider, as numpy columns indexed by participant slot.

Formulas (docs/metrics.md has the units, sources and worked examples; the tests check each
against hand-computed values):

* **Power seconds.** A rider's power samples are binned by the whole second of their device
  timestamp (mean of the samples in a second). A gap of ``d`` seconds between two seconds
  that have samples is filled with the later second's power for ``min(d, max_gap_s) - 1``
  seconds (the rule energy is integrated with); a longer gap is a pause, not zeros. A
  second is *closed* when a sample of a later second arrives; only closed seconds count.
* **Normalized Power** (Coggan; Allen & Coggan, *Training and Racing with a Power Meter*,
  2010): the 30 s rolling mean of the power seconds, from the 30th second on, raised to the
  4th power, averaged, 4th root. Kept as a running sum of 4th powers plus a ring of each
  rider's last 30 seconds, so the work per tick is a few array operations, whatever the
  number of riders (a burst of late samples is handled the same way, in one pass).
* **IF** = NP / FTP; **TSS** = seconds x NP x IF / (FTP x 3600) x 100.
* **Power zones** (Coggan's 7 levels, % of FTP): Z1 <= 55, Z2 <= 75, Z3 <= 90, Z4 <= 105,
  Z5 <= 120, Z6 <= 150, Z7 above; seconds in each counted over the power seconds.
* **Heart-rate zones** (5, Karvonen: % of heart-rate reserve above resting): Z1 < 60
  (everything below too), Z2 < 70, Z3 < 80, Z4 < 90, Z5 from 90. Each heart-rate sample
  counts ``clamp(ts - previous heart-rate ts, 0, max_gap_s)`` seconds in its zone.
* **Calories.** Riders with power: from the work, kcal = kJ / (4.184 x 0.24) (24 % gross
  efficiency; Allen & Coggan's "1 kJ of work ~ 1 kcal eaten"). Others: from heart rate,
  Keytel et al. (2005, J Sports Sci 23:289) without VO2max, per minute in kJ:
  male -55.0969 + 0.6309 HR + 0.1988 W + 0.2017 A; female -20.4022 + 0.4472 HR - 0.1263 W
  + 0.074 A (W kg, A years; sex unknown: the mean of both; never below 0), over the same
  heart-rate seconds as the zones.

Samples older than the rider's latest second (power) or latest heart-rate timestamp do not
move these metrics (they still count for energy, averages and maxima): a live metric
follows the live stream. A whole late sync (a phone's health store, in order) is a burst
that is handled like live data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.profile import DEFAULT, Effective, Sex

WINDOW_S = 30
POWER_ZONES = np.array([0.55, 0.75, 0.90, 1.05, 1.20, 1.50])  # upper bounds of Z1..Z6, x FTP
HR_ZONES = np.array([0.60, 0.70, 0.80, 0.90])  # lower bounds of Z2..Z5, x heart-rate reserve
N_POWER_ZONES = len(POWER_ZONES) + 1
N_HR_ZONES = len(HR_ZONES) + 1
KCAL_PER_KJ = 1.0 / (4.184 * 0.24)  # mechanical kJ -> kcal at 24 % gross efficiency
KJ_PER_KCAL = 4.184
_SEX_CODE = {None: 0.0, Sex.MALE: 1.0, Sex.FEMALE: 2.0}

# -- the formulas on plain numbers (vectorised; also what the tests check) -----------------------
def power_zone(power_w: np.ndarray, ftp_w: np.ndarray) -> np.ndarray:
    """Coggan level 1-7 of each power (``0`` where the power is NaN)."""
    ratio = np.asarray(power_w, float) / np.asarray(ftp_w, float)
    zone = 1 + (ratio[..., None] > POWER_ZONES).sum(-1)
    return np.where(np.isnan(ratio), 0, zone)  # type: ignore[no-any-return]


def hr_zone(hr_bpm: np.ndarray, hr_max: np.ndarray, hr_rest: np.ndarray) -> np.ndarray:
    """Karvonen zone 1-5 of each heart rate (``0`` where it is NaN)."""
    hr = np.asarray(hr_bpm, float)
    reserve = (hr - hr_rest) / (np.asarray(hr_max, float) - hr_rest)
    zone = 1 + (reserve[..., None] >= HR_ZONES).sum(-1)
    return np.where(np.isnan(hr), 0, zone)  # type: ignore[no-any-return]


def keytel_line(weight_kg: Any, age_y: Any, sex: Any) -> tuple[Any, Any]:
    """Keytel et al. (2005) without VO2max as a line in heart rate: (intercept, slope) in
    kJ/min (sex 1 male, 2 female, 0 the mean of both). Per rider, set with its profile."""
    male = -55.0969 + 0.1988 * weight_kg + 0.2017 * age_y, 0.6309
    female = -20.4022 - 0.1263 * weight_kg + 0.074 * age_y, 0.4472

    def pick(m: Any, f: Any) -> Any:
        return np.where(sex == 1.0, m, np.where(sex == 2.0, f, (m + f) / 2))

    return pick(male[0], female[0]), pick(male[1], female[1])


def keytel_kcal_per_min(hr_bpm: np.ndarray, weight_kg: np.ndarray, age_y: np.ndarray,
                        sex: np.ndarray) -> np.ndarray:
    """Keytel et al. (2005) energy expenditure in kcal/min (never below 0)."""
    intercept, slope = keytel_line(weight_kg, age_y, sex)
    return np.maximum(intercept + slope * hr_bpm, 0.0) / KJ_PER_KCAL  # type: ignore[no-any-return]


def normalized_power(p4_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """NP from the running sum of 4th powers (NaN before the 30th second)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (p4_sum / np.maximum(count, 1)) ** 0.25, np.nan)  # type: ignore[no-any-return]


def training_stress(seconds: np.ndarray, np_w: np.ndarray, ftp_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IF, TSS) from the duration, NP and FTP (Coggan)."""
    intensity = np_w / ftp_w
    return intensity, seconds * np_w * intensity / (ftp_w * 3600.0) * 100.0


# name -> (dtype, per-slot shape, fill): every column of ``RiderMetrics``
_COLUMNS: dict[str, tuple[Any, tuple[int, ...], float]] = {
    # the effective profile (actors.profile)
    "ftp_w": (np.float64, (), DEFAULT.ftp_w),
    "hr_max_bpm": (np.float64, (), DEFAULT.hr_max_bpm),
    "hr_rest_bpm": (np.float64, (), DEFAULT.hr_rest_bpm),
    "weight_kg": (np.float64, (), DEFAULT.weight_kg),
    "age_y": (np.float64, (), DEFAULT.age_y),
    "sex": (np.float64, (), 0.0),
    "kj_min_a": (np.float64, (), float(keytel_line(DEFAULT.weight_kg, DEFAULT.age_y, 0.0)[0])),  # Keytel line
    "kj_min_b": (np.float64, (), float(keytel_line(DEFAULT.weight_kg, DEFAULT.age_y, 0.0)[1])),
    # power seconds
    "p_sec": (np.float64, (), np.nan),  # the open second (NaN: no power yet)
    "p_open_sum": (np.float64, (), 0.0),
    "p_open_n": (np.int32, (), 0),
    "p_seconds": (np.int32, (), 0),  # closed seconds
    # the last 30 closed seconds, second k at k % 30 (float32: ~7 digits of a watt value are
    # plenty, and it halves what every checkpoint carries per rider)
    "p_ring": (np.float32, (WINDOW_S,), 0.0),
    "np_p4": (np.float64, (), 0.0),  # sum of (30 s mean)^4 over seconds 30, 31, ...
    "np_n": (np.int32, (), 0),
    "pz_s": (np.int32, (N_POWER_ZONES,), 0),
    # heart rate
    "h_ts": (np.float64, (), np.nan),  # the newest heart-rate timestamp
    "hz_s": (np.float32, (N_HR_ZONES,), 0.0),
    "kcal_hr": (np.float64, (), 0.0),
}
# Not checkpointed: rebuilt from the class's profiles on restore (``set_profile``).
PROFILE_COLUMNS = ("ftp_w", "hr_max_bpm", "hr_rest_bpm", "weight_kg", "age_y", "sex", "kj_min_a", "kj_min_b")
CHECKPOINT_LAYOUT = 2  # 1: every column, int64 / float64 (an hour on main; not read back)
METRIC_BOARD_COLUMNS = ("power_zone", "hr_zone", "np_w", "kcal", "if", "tss")



def _distinct(keys: np.ndarray) -> bool:
    if len(keys) < 2:
        return True
    ordered = np.sort(keys)
    return not bool((ordered[1:] == ordered[:-1]).any())


# -- the columns -------------------------------------------------------------------------------
class RiderMetrics:
    """Every rider's profile numbers and metric accumulators (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.cols: dict[str, np.ndarray] = {}
        self.grow(capacity, 0)

    def grow(self, capacity: int, used: int) -> None:
        for name, (dtype, shape, fill) in _COLUMNS.items():
            fresh = np.full((capacity, *shape), fill, dtype=dtype)
            if name in self.cols:
                fresh[:used] = self.cols[name][:used]
            self.cols[name] = fresh

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.cols.values()))

    def set_profile(self, slot: int, profile: Effective) -> None:
        c = self.cols
        c["ftp_w"][slot], c["weight_kg"][slot], c["age_y"][slot] = profile.ftp_w, profile.weight_kg, profile.age_y
        c["hr_max_bpm"][slot], c["hr_rest_bpm"][slot] = profile.hr_max_bpm, profile.hr_rest_bpm
        c["sex"][slot] = _SEX_CODE[profile.sex]
        c["kj_min_a"][slot], c["kj_min_b"][slot] = keytel_line(profile.weight_kg, profile.age_y, c["sex"][slot])

    # -- updating -----------------------------------------------------------------------------
    def update(self, slot: np.ndarray, values: np.ndarray, max_gap_s: float) -> None:
        """Take the applied samples of a tick: ``slot`` per sample, ``values`` (n, 6) as in
        ``actors.wire.VALUE_COLUMNS`` (NaN: absent)."""
        if not len(slot):
            return
        ts = values[:, 0]
        timed = ~np.isnan(ts)
        distinct = _distinct(slot)  # the usual tick: each rider at most once (1 Hz devices)
        power = timed & ~np.isnan(values[:, 2])
        if power.any():
            args = (slot[power], ts[power], values[power, 2])
            if not (distinct and self._power_next(*args)):
                self._power(*args, max_gap_s)
        heart = timed & ~np.isnan(values[:, 1])
        if heart.any():
            args = (slot[heart], ts[heart], values[heart, 1])
            if distinct:
                self._heart_distinct(*args, max_gap_s)
            else:
                self._heart(*args, max_gap_s)

    def _power_next(self, slot: np.ndarray, ts: np.ndarray, power: np.ndarray) -> bool:
        """``_power`` for distinct riders whose sample is in their open second, the next
        one, or their first: at most one second closes per rider, no gap to fill. False
        (nothing done) when the tick is not like that."""
        c = self.cols
        sec = np.floor(ts)
        step = sec - c["p_sec"][slot]
        same, first = step == 0, np.isnan(step)
        after = step == 1
        if not (same | after | first).all():
            return False
        c["p_open_sum"][slot[same]] += power[same]
        c["p_open_n"][slot[same]] += 1
        if after.any():
            closing = slot[after]
            self._push_one(closing, c["p_open_sum"][closing] / c["p_open_n"][closing])
        fresh = after | first
        c["p_sec"][slot[fresh]], c["p_open_sum"][slot[fresh]], c["p_open_n"][slot[fresh]] = sec[fresh], power[fresh], 1
        return True

    def _push_one(self, slot: np.ndarray, power: np.ndarray) -> None:
        """``_push`` of one second for each of distinct riders: the new second replaces the
        oldest in the ring, and the window is the ring's sum."""
        c = self.cols
        n = c["p_seconds"][slot]
        c["p_ring"][slot, n % WINDOW_S] = power
        counted = n >= WINDOW_S - 1
        mean = c["p_ring"][slot[counted]].sum(axis=1, dtype=np.float64) / WINDOW_S
        c["np_p4"][slot[counted]] += np.maximum(mean, 0.0) ** 4
        c["np_n"][slot[counted]] += 1
        c["pz_s"][slot, power_zone(power, c["ftp_w"][slot]) - 1] += 1
        c["p_seconds"][slot] = n + 1

    def _heart_distinct(self, slot: np.ndarray, ts: np.ndarray, hr: np.ndarray, max_gap_s: float) -> None:
        """``_heart`` for distinct riders (each one sample): no sorting, plain indexing."""
        c = self.cols
        previous = c["h_ts"][slot]
        live = ~(ts <= previous)
        slot, ts, hr, previous = slot[live], ts[live], hr[live], previous[live]
        dt = np.fmin(np.fmax(ts - previous, 0.0), max_gap_s)  # (fmax: a NaN previous counts 0)
        c["hz_s"][slot, hr_zone(hr, c["hr_max_bpm"][slot], c["hr_rest_bpm"][slot]) - 1] += dt
        rate = np.maximum(c["kj_min_a"][slot] + c["kj_min_b"][slot] * hr, 0.0) / KJ_PER_KCAL
        c["kcal_hr"][slot] += rate * dt / 60.0
        c["h_ts"][slot] = ts

    def _power(self, slot: np.ndarray, ts: np.ndarray, power: np.ndarray, max_gap_s: float) -> None:
        c = self.cols
        sec = np.floor(ts)
        live = ~(sec < c["p_sec"][slot])  # older than the open second: not for these metrics
        slot, sec, power = slot[live], sec[live], power[live]
        if not len(slot):
            return
        touched = np.unique(slot)
        was_open = touched[~np.isnan(c["p_sec"][touched])]
        slot = np.concatenate([was_open, slot])  # each open second as a first partial group
        sec = np.concatenate([c["p_sec"][was_open], sec])
        total = np.concatenate([c["p_open_sum"][was_open], power])
        count = np.concatenate([c["p_open_n"][was_open], np.ones(len(power), np.int64)])
        order = np.lexsort((sec, slot))
        slot, sec, total, count = slot[order], sec[order], total[order], count[order]
        new_group = np.ones(len(slot), bool)
        new_group[1:] = (slot[1:] != slot[:-1]) | (sec[1:] != sec[:-1])
        starts = np.flatnonzero(new_group)
        g_slot, g_sec = slot[starts], sec[starts]
        g_sum, g_n = np.add.reduceat(total, starts), np.add.reduceat(count, starts)
        first = np.ones(len(starts), bool)
        first[1:] = g_slot[1:] != g_slot[:-1]
        last = np.ones(len(starts), bool)
        last[:-1] = g_slot[1:] != g_slot[:-1]
        gap = np.zeros(len(starts))
        gap[1:] = g_sec[1:] - g_sec[:-1]
        fill = np.where(first, 0, np.clip(np.minimum(gap, max(max_gap_s, 1.0)) - 1, 0, None)).astype(np.int64)
        pushes = fill + ~last  # per group: its gap's fill seconds, then itself once closed
        self._push(np.repeat(g_slot, pushes), np.repeat(g_sum / g_n, pushes))
        ends = g_slot[last]
        c["p_sec"][ends], c["p_open_sum"][ends], c["p_open_n"][ends] = g_sec[last], g_sum[last], g_n[last]

    def _push(self, slot: np.ndarray, power: np.ndarray) -> None:
        """Close seconds (``slot`` sorted, each rider's seconds in time order): the 30 s
        rolling means through a cumulative sum over [last 30 seconds, new seconds] blocks."""
        if not len(slot):
            return
        c = self.cols
        size = len(c["p_seconds"])
        riders, m = np.unique(slot, return_counts=True)
        n = c["p_seconds"][riders]
        window = np.arange(WINDOW_S)
        history = np.take_along_axis(c["p_ring"][riders], (n[:, None] + window) % WINDOW_S, axis=1)
        width = WINDOW_S + m
        block = np.cumsum(width) - width
        flat = np.empty(int(width.sum()))
        flat[(block[:, None] + window).ravel()] = history.ravel()
        rank = np.arange(len(slot)) - np.repeat(np.cumsum(m) - m, m)
        at = np.repeat(block + WINDOW_S, m) + rank
        flat[at] = power.astype(np.float32)  # (rounded as the ring keeps them: both paths agree)
        running = np.concatenate([[0.0], np.cumsum(flat)])
        mean = (running[at + 1] - running[at + 1 - WINDOW_S]) / WINDOW_S
        counted = np.repeat(n, m) + rank >= WINDOW_S - 1  # the 30th second on
        c["np_p4"] += np.bincount(slot[counted], weights=np.maximum(mean[counted], 0.0) ** 4, minlength=size)
        c["np_n"] += np.bincount(slot[counted], minlength=size)
        zone = power_zone(power, c["ftp_w"][slot]) - 1
        c["pz_s"] += np.bincount(slot * N_POWER_ZONES + zone, minlength=size * N_POWER_ZONES).reshape(size, -1)
        done = n + m
        tail = flat[(block + m)[:, None] + window]
        c["p_ring"][riders[:, None], (done[:, None] + window) % WINDOW_S] = tail
        c["p_seconds"][riders] = done

    def _heart(self, slot: np.ndarray, ts: np.ndarray, hr: np.ndarray, max_gap_s: float) -> None:
        c = self.cols
        live = ts > c["h_ts"][slot]
        live |= np.isnan(c["h_ts"][slot])
        slot, ts, hr = slot[live], ts[live], hr[live]
        if not len(slot):
            return
        size = len(c["h_ts"])
        order = np.lexsort((ts, slot))
        slot, ts, hr = slot[order], ts[order], hr[order]
        previous = np.empty(len(ts))
        previous[1:] = ts[:-1]
        first = np.ones(len(ts), bool)
        first[1:] = slot[1:] != slot[:-1]
        previous[first] = c["h_ts"][slot[first]]
        dt = np.fmin(np.fmax(ts - previous, 0.0), max_gap_s)  # (fmax: a NaN previous counts 0)
        zone = hr_zone(hr, c["hr_max_bpm"][slot], c["hr_rest_bpm"][slot]) - 1
        c["hz_s"] += np.bincount(slot * N_HR_ZONES + zone, weights=dt, minlength=size * N_HR_ZONES).reshape(size, -1)
        rate = np.maximum(c["kj_min_a"][slot] + c["kj_min_b"][slot] * hr, 0.0) / KJ_PER_KCAL
        c["kcal_hr"] += np.bincount(slot, weights=rate * dt / 60.0, minlength=size)
        np.fmax.at(c["h_ts"], slot, ts)

    # -- reading --------------------------------------------------------------------------------
    def board_columns(self, order: np.ndarray, *, power_w: np.ndarray, hr_bpm: np.ndarray,
                      energy_kj: np.ndarray, has_power: np.ndarray) -> dict[str, np.ndarray]:
        """``METRIC_BOARD_COLUMNS`` for the slots in ``order`` (NaN where unknown); the
        arrays given are the session's per-slot columns (latest power and heart rate)."""
        c = self.cols
        ftp = c["ftp_w"][order]
        np_w = normalized_power(c["np_p4"][order], c["np_n"][order])
        intensity, tss = training_stress(c["p_seconds"][order], np_w, ftp)
        kcal = np.where(has_power[order], energy_kj[order] * KCAL_PER_KJ, c["kcal_hr"][order])
        zone_p = power_zone(power_w[order], ftp).astype(float)
        zone_h = hr_zone(hr_bpm[order], c["hr_max_bpm"][order], c["hr_rest_bpm"][order]).astype(float)
        return {"power_zone": np.where(zone_p > 0, zone_p, np.nan), "hr_zone": np.where(zone_h > 0, zone_h, np.nan),
                "np_w": np_w, "kcal": kcal, "if": intensity, "tss": tss}

    def summary(self, slot: int, *, power_w: np.ndarray, hr_bpm: np.ndarray, energy_kj: np.ndarray,
                has_power: np.ndarray) -> dict[str, Any]:
        """One rider's metrics for the class snapshot (None where unknown); the arrays are
        the session's per-slot columns, as for ``board_columns``."""
        board = self.board_columns(np.array([slot]), power_w=power_w, hr_bpm=hr_bpm, energy_kj=energy_kj,
                                   has_power=has_power)
        numbers: dict[str, float | int | None] = {k: (None if np.isnan(v[0]) else float(v[0])) for k, v in board.items()}
        for key in ("power_zone", "hr_zone"):
            zone = board[key][0]
            numbers[key] = None if np.isnan(zone) else int(zone)
        c = self.cols
        return {
            **numbers,
            "kcal_method": "work" if has_power[slot] else "heart_rate",
            "power_seconds": int(c["p_seconds"][slot]),
            "power_zone_s": c["pz_s"][slot].tolist(),
            "hr_zone_s": np.round(c["hz_s"][slot], 3).tolist(),
        }

    # -- checkpoints ----------------------------------------------------------------------------
    def to_checkpoint(self, n: int) -> dict[str, Any]:
        return {"layout": CHECKPOINT_LAYOUT, "cols": {
            name: arr[:n].tobytes() for name, arr in self.cols.items() if name not in PROFILE_COLUMNS}}

    def restore(self, raw: dict[str, Any], n: int) -> None:
        """Columns from ``to_checkpoint``; a column the checkpoint lacks keeps its default,
        and so does everything of another layout (metrics count again from then on)."""
        if raw.get("layout") != CHECKPOINT_LAYOUT:
            return
        for name, buf in raw["cols"].items():
            arr = self.cols.get(name)
            if arr is not None:
                arr[:n] = np.frombuffer(buf, dtype=arr.dtype).reshape((n, *arr.shape[1:]))

"""Scenario files: a swarm described in TOML (or the same structure as JSON).

``load(path)`` reads and validates a file and returns a ``Scenario``; ``parse(data)``
does the same for an already-decoded mapping. ``Scenario.swarm_config(base_url)`` gives
the ``SwarmConfig`` to run. Any problem raises ``ScenarioError`` whose message names the
file and the dotted field (``faults.dup_rate: must be a number in [0, 1], got 2``);
unknown keys are errors too, so a typo never silently falls back to a default.

Schema (every table and key optional unless marked; defaults in brackets)::

    name = "steady-class"            # required
    description = "..."
    seed = 1                         # [1]
    mode = "protocol"                # protocol: devices speak protocol v1 (the default);
                                     # ble: GATT sensors -> bridge (sims/ble_swarm.py), below

    [ble]                            # only with mode = "ble"
    speed = 1.0                      # link seconds per real second (accelerated clock)

    [sessions]
    count = 10                       # [2]
    prefix = "steady"                # [name + a random suffix, so reruns never collide]

    [riders]
    count = 1000                     # riders in live classes [20]
    kits = { phone = 0.7, "strap+trainer" = 0.3 }   # weights; kinds: phone strap power trainer cadence

    [connections]
    shape = "phones"                 # phones: one connection per rider; hubs: hub_size devices each
    hub_size = 30                    # [30 for hubs]

    [load]
    seconds = 60                     # [20]
    rate_hz = 1.0                    # samples per second per device [1]
    board_hz = 10.0                  # the latency probe's board rate, one per class [10]
    participant_boards = false       # every rider also watches its own board
    board_protocol = "1.1"           # "1.1": on its device socket (one per rider); "1": a second socket
    participant_board_hz = 1.0
    join_window_s = 0.0              # 0: all connected before the start; else join within it
    surges = [{ at_s = 30, duration_s = 30, multiplier = 10 }]

    [faults]                         # all rates default to 0
    dup_rate, reorder_rate, bad_rate, bad_ts_rate          # per sample / frame, in [0, 1]
    sensor_dropout_rate, sensor_dropout_s = [min, max]     # per device-second
    link_dropout_rate, link_dropout_s = [min, max]         # per connection-second
    clock_skew_s, clock_drift_ppm
    reconnect_storms = [{ at_s = 20, fraction = 0.5 }]
    late_sync = { fraction = 0.1, hours_ago = 3, ride_s = 2700, upload_at_s = 10, window_s = 20 }

    [run]
    drain_timeout_s = 60.0
    phases = true                    # drive lobby -> live -> cooldown -> ended

    [admission]                      # seats and a join storm (sims/admission.py)
    capacity = 5000                  # the classes' seats [none: no limit]
    in_class = 0.2                   # share of riders in class from the start; the others
    storm_at_s = 10                  # storm in from here, over load.join_window_s

    [on_demand]                      # then ride the classes on demand (sims/replay.py)
    riders = 20                      # on-demand riders (spread over the classes)
    seconds = 30                     # how long they ride

    [plan]                           # a class plan (docs/protocol.md): the classes start
    start_in_s = 8                   # this long after creation and move through their
    segments = [{ kind = "warm-up", duration_s = 20, ftp_pct = [50, 65], cue = "Easy" }, ...]
                                     # phases by themselves; the server validates segments

In mode "ble", ``sessions.count`` is the number of studios (one bridge each),
``riders.count`` the riders per studio, and kits combine the BLE kinds ``strap``,
``power``, ``csc``, ``trainer``; ``[connections]`` and ``[faults]`` do not apply (an
error), and of ``[load]`` only ``seconds`` does.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sims.faults import FaultConfig, LateSync, ReconnectStorm
from sims.load import Surge
from sims.swarm import DEVICE_KINDS as _KINDS
from sims.errors import SimsError

__all__ = ["Scenario", "ScenarioError", "load", "parse"]

DEVICE_KINDS = tuple(_KINDS)
_TOP = {"name", "description", "seed", "mode", "ble", "sessions", "riders", "connections", "load", "faults", "run",
        "plan", "admission", "on_demand"}
MODES = ("protocol", "ble")


class ScenarioError(SimsError, ValueError):
    """A scenario file that cannot be run; ``field`` is the dotted path of the culprit."""

    def __init__(self, field_path: str, message: str, *, source: str | None = None) -> None:
        self.field = field_path
        self.source = source
        super().__init__(f"{source + ': ' if source else ''}{field_path}: {message}")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 1
    sessions: int = 2
    session_prefix: str | None = None
    riders: int = 20
    kits: dict[str, float] = field(default_factory=lambda: {"phone": 1.0})
    hub_size: int = 1
    seconds: float = 20.0
    rate_hz: float = 1.0
    board_hz: float = 10.0
    participant_boards: bool = False
    participant_board_hz: float = 1.0
    board_protocol: str = "1.1"
    join_window_s: float = 0.0
    surges: tuple[Surge, ...] = ()
    faults: FaultConfig = field(default_factory=FaultConfig)
    drain_timeout_s: float = 60.0
    phases: bool = True
    class_plan: dict[str, Any] | None = None
    plan_start_in_s: float = 8.0
    capacity: int | None = None
    in_class: float = 0.0
    storm_at_s: float = 0.0
    on_demand: dict[str, Any] | None = None  # {"riders", "seconds"}: ReplaySwarm's arguments
    mode: str = "protocol"
    ble_speed: float = 1.0

    def ble_config(self, base_url: str, **overrides: Any) -> Any:
        """The ``sims.ble_swarm.BleStudioConfig`` of a ``mode = "ble"`` scenario."""
        from sims.ble_swarm import BleStudioConfig

        values: dict[str, Any] = {
            "base_url": base_url, "name": self.name, "studios": self.sessions, "riders": self.riders,
            "kits": dict(self.kits), "seconds": self.seconds, "speed": self.ble_speed, "seed": self.seed,
            "session_prefix": self.session_prefix or f"{self.name}-{uuid.uuid4().hex[:6]}",
            "drain_timeout_s": self.drain_timeout_s, "phases": self.phases,
        }
        values.update(overrides)
        return BleStudioConfig(**values)

    def swarm_config(self, base_url: str, **overrides: Any) -> Any:
        from sims.swarm import SwarmConfig

        values: dict[str, Any] = {
            "base_url": base_url, "name": self.name, "seed": self.seed, "sessions": self.sessions,
            "session_prefix": self.session_prefix or f"{self.name}-{uuid.uuid4().hex[:6]}",
            "devices": self.riders, "kits": dict(self.kits), "hub_size": self.hub_size,
            "seconds": self.seconds, "rate_hz": self.rate_hz, "board_hz": self.board_hz,
            "participant_boards": self.participant_boards, "participant_board_hz": self.participant_board_hz,
            "board_protocol": self.board_protocol, "join_window_s": self.join_window_s, "surges": self.surges, "faults": self.faults,
            "drain_timeout_s": self.drain_timeout_s, "phases": self.phases,
            "class_plan": self.class_plan, "plan_start_in_s": self.plan_start_in_s,
            "capacity": self.capacity, "in_class": self.in_class, "storm_at_s": self.storm_at_s,
        }
        values.update(overrides)
        return SwarmConfig(**values)


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError("<file>", f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError("<syntax>", str(exc), source=str(path)) from None
    try:
        return parse(data)
    except ScenarioError as exc:
        raise ScenarioError(exc.field, str(exc).split(": ", 1)[1], source=str(path)) from None


class _Table:
    """Typed access to one table of the file; every read is checked and named."""

    def __init__(self, data: Any, path: str, allowed: set[str]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ScenarioError(path or "<root>", f"must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ScenarioError(_join(path, unknown[0]), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        self.data = data
        self.path = path

    def name(self, key: str) -> str:
        return _join(self.path, key)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ScenarioError(self.name(key), f"must be a number in [{low:g}, {high:g}], got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ScenarioError(self.name(key), f"must be an integer in [{low}, {high}], got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(self.name(key), f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, default: str | None, check: Callable[[str], bool] = bool) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not check(value):
            raise ScenarioError(self.name(key), f"must be a non-empty string of letters, digits, '-', '_', got {value!r}")
        return value

    def span(self, key: str, default: tuple[float, float]) -> tuple[float, float]:
        value = self.data.get(key, list(default))
        ok = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if not ok or not 0 < value[0] <= value[1] <= 86_400:
            raise ScenarioError(self.name(key), f"must be [min, max] seconds with 0 < min <= max, got {value!r}")
        return float(value[0]), float(value[1])

    def tables(self, key: str) -> list[tuple[str, Any]]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise ScenarioError(self.name(key), "must be an array of tables")
        return [(f"{self.name(key)}[{i}]", item) for i, item in enumerate(value)]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _ident(value: str) -> bool:
    return bool(value) and len(value) <= 60 and all(c.isalnum() or c in "-_" for c in value)


def parse(data: Any) -> Scenario:
    root = _Table(data, "", _TOP)
    name = root.string("name", None, _ident)
    if name is None:
        raise ScenarioError("name", "is required")
    description = root.data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError("description", "must be a string")
    mode = root.data.get("mode", "protocol")
    if mode not in MODES:
        raise ScenarioError("mode", f"must be 'protocol' or 'ble', got {mode!r}")
    ble = mode == "ble"
    ble_speed = _ble_speed(root, ble)
    sessions = _Table(root.data.get("sessions"), "sessions", {"count", "prefix"})
    riders = _Table(root.data.get("riders"), "riders", {"count", "kits"})
    load_ = _Table(root.data.get("load"), "load", {
        "seconds", "rate_hz", "board_hz", "participant_boards", "participant_board_hz", "board_protocol",
        "join_window_s", "surges"})
    run = _Table(root.data.get("run"), "run", {"drain_timeout_s", "phases"})
    seconds = load_.number("seconds", 20.0, 1.0, 86_400.0)
    return Scenario(
        name=name,
        description=description,
        seed=root.integer("seed", 1, 0, 2**31),
        sessions=sessions.integer("count", 2, 1, 10_000),
        session_prefix=sessions.string("prefix", None, _ident),
        riders=riders.integer("count", 20, 1, 1_000_000),
        kits=_kits(riders, ble),
        hub_size=_hub_size(_Table(root.data.get("connections"), "connections", {"shape", "hub_size"})),
        seconds=seconds,
        rate_hz=load_.number("rate_hz", 1.0, 0.01, 100.0),
        board_hz=load_.number("board_hz", 10.0, 1.0, 10.0),
        participant_boards=load_.boolean("participant_boards", False),
        participant_board_hz=load_.number("participant_board_hz", 1.0, 1.0, 10.0),
        board_protocol=_board_protocol(load_),
        join_window_s=load_.number("join_window_s", 0.0, 0.0, seconds),
        surges=tuple(_surge(path, item, seconds) for path, item in load_.tables("surges")),
        faults=_faults(_Table(root.data.get("faults"), "faults", {
            "dup_rate", "reorder_rate", "bad_rate", "bad_ts_rate", "sensor_dropout_rate", "sensor_dropout_s",
            "link_dropout_rate", "link_dropout_s", "clock_skew_s", "clock_drift_ppm", "reconnect_storms",
            "late_sync"}), seconds),
        drain_timeout_s=run.number("drain_timeout_s", 60.0, 1.0, 3600.0),
        phases=run.boolean("phases", True),
        **_class_plan(root),
        **_admission(root, seconds),
        on_demand=_on_demand(root),
        mode=mode,
        ble_speed=ble_speed,
    )


def _on_demand(root: _Table) -> dict[str, Any] | None:
    """``[on_demand]``: riders and seconds of the ride on demand after the classes aired."""
    if "on_demand" not in root.data:
        return None
    table = _Table(root.data["on_demand"], "on_demand", {"riders", "seconds"})
    return {"riders": table.integer("riders", 20, 1, 100_000), "seconds": table.number("seconds", 30.0, 1.0, 86_400.0)}


def _admission(root: _Table, seconds: float) -> dict[str, Any]:
    """``[admission]``: the classes' capacity, who is in class already, when the storm comes."""
    if "admission" not in root.data:
        return {}
    table = _Table(root.data["admission"], "admission", {"capacity", "in_class", "storm_at_s"})
    capacity = table.integer("capacity", 0, 0, 1_000_000)
    return {"capacity": capacity or None, "in_class": table.number("in_class", 0.0, 0.0, 1.0),
            "storm_at_s": table.number("storm_at_s", 0.0, 0.0, seconds)}


def _class_plan(root: _Table) -> dict[str, Any]:
    """``[plan]``: the start delay and the segments (their fields are the server's to check)."""
    if "plan" not in root.data:
        return {}
    plan = _Table(root.data["plan"], "plan", {"start_in_s", "segments"})
    segments = plan.data.get("segments")
    if not isinstance(segments, list) or not segments or not all(isinstance(s, Mapping) for s in segments):
        raise ScenarioError("plan.segments", "must be a non-empty array of tables")
    for i, segment in enumerate(segments):
        duration = segment.get("duration_s")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
            raise ScenarioError(f"plan.segments[{i}].duration_s", f"must be a positive number, got {duration!r}")
    return {"class_plan": {"segments": [dict(s) for s in segments]},
            "plan_start_in_s": plan.number("start_in_s", 8.0, 0.0, 3600.0)}


def _board_protocol(load_: _Table) -> str:
    value = load_.data.get("board_protocol", "1.1")
    if value not in ("1", "1.1"):
        raise ScenarioError("load.board_protocol", f"must be '1' (a board socket per rider) or '1.1' (the board on the device socket), got {value!r}")
    return str(value)


def _ble_speed(root: _Table, ble: bool) -> float:
    if not ble:
        if "ble" in root.data:
            raise ScenarioError("ble", "only with mode = 'ble'")
        return 1.0
    for key in ("connections", "faults"):
        if key in root.data:
            raise ScenarioError(key, "not supported in mode 'ble' (the bridge is the one hub connection)")
    load_ = root.data.get("load") or {}
    for key in ("rate_hz", "join_window_s", "surges", "participant_boards"):
        if isinstance(load_, Mapping) and key in load_:
            raise ScenarioError(f"load.{key}", "not supported in mode 'ble' (only load.seconds applies)")
    return _Table(root.data.get("ble"), "ble", {"speed"}).number("speed", 1.0, 0.1, 100.0)


def _kits(riders: _Table, ble: bool = False) -> dict[str, float]:
    from sims.ble_swarm import BLE_KINDS

    known = BLE_KINDS if ble else DEVICE_KINDS
    what = "BLE sensor kind" if ble else "device kind"
    kits = riders.data.get("kits", {"strap+power": 1.0} if ble else {"phone": 1.0})
    if not isinstance(kits, Mapping) or not kits:
        raise ScenarioError(riders.name("kits"), "must be a non-empty table of kit = weight")
    out = {}
    for kit, weight in kits.items():
        path = riders.name(f"kits.{kit}")
        kinds = str(kit).split("+")
        bad = [k for k in kinds if k not in known]
        if bad or len(set(kinds)) != len(kinds):
            raise ScenarioError(path, f"unknown or repeated {what} {bad[0] if bad else kit!r} "
                                      f"(kinds: {', '.join(known)}, joined with '+')")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise ScenarioError(path, f"weight must be a positive number, got {weight!r}")
        out[str(kit)] = float(weight)
    return out


def _hub_size(conn: _Table) -> int:
    shape = conn.data.get("shape", "phones")
    if shape not in ("phones", "hubs"):
        raise ScenarioError(conn.name("shape"), f"must be 'phones' or 'hubs', got {shape!r}")
    if shape == "phones":
        if "hub_size" in conn.data:
            raise ScenarioError(conn.name("hub_size"), "only applies to shape = 'hubs'")
        return 1
    return conn.integer("hub_size", 30, 1, 256)


def _surge(path: str, item: Any, seconds: float) -> Surge:
    t = _Table(item, path, {"at_s", "duration_s", "multiplier"})
    if "at_s" not in t.data:
        raise ScenarioError(t.name("at_s"), "is required")
    return Surge(t.number("at_s", 0.0, 0.0, seconds), t.number("duration_s", 30.0, 0.1, 86_400.0),
                 t.number("multiplier", 10.0, 0.01, 100.0))


def _faults(t: _Table, seconds: float) -> FaultConfig:
    storms = []
    for path, item in t.tables("reconnect_storms"):
        s = _Table(item, path, {"at_s", "fraction"})
        if "at_s" not in s.data:
            raise ScenarioError(s.name("at_s"), "is required")
        storms.append(ReconnectStorm(s.number("at_s", 0.0, 0.0, seconds), s.number("fraction", 0.5, 0.0, 1.0)))
    return FaultConfig(
        dup_rate=t.number("dup_rate", 0.0, 0.0, 1.0),
        reorder_rate=t.number("reorder_rate", 0.0, 0.0, 1.0),
        bad_rate=t.number("bad_rate", 0.0, 0.0, 1.0),
        bad_ts_rate=t.number("bad_ts_rate", 0.0, 0.0, 1.0),
        sensor_dropout_rate=t.number("sensor_dropout_rate", 0.0, 0.0, 1.0),
        sensor_dropout_s=t.span("sensor_dropout_s", (3.0, 60.0)),
        link_dropout_rate=t.number("link_dropout_rate", 0.0, 0.0, 1.0),
        link_dropout_s=t.span("link_dropout_s", (2.0, 30.0)),
        clock_skew_s=t.number("clock_skew_s", 0.0, 0.0, 60.0),
        clock_drift_ppm=t.number("clock_drift_ppm", 0.0, 0.0, 10_000.0),
        reconnect_storms=tuple(storms),
        late_sync=_late_sync(_Table(t.data.get("late_sync"), t.name("late_sync"), {
            "fraction", "hours_ago", "ride_s", "upload_at_s", "window_s"}), seconds),
    )


def _late_sync(t: _Table, seconds: float) -> LateSync:
    # the server keeps samples up to 7 days old; a ride must also end before "now"
    hours_ago = t.number("hours_ago", 3.0, 0.01, 24 * 6.9)
    ride_s = t.number("ride_s", 2700.0, 1.0, 4 * 3600.0)
    if ride_s > hours_ago * 3600.0:
        raise ScenarioError(t.name("ride_s"), f"a ride of {ride_s:g} s cannot have started only {hours_ago:g} h ago")
    return LateSync(
        fraction=t.number("fraction", 0.0, 0.0, 10.0),
        hours_ago=hours_ago,
        ride_s=ride_s,
        upload_at_s=t.number("upload_at_s", 5.0, 0.0, seconds),
        window_s=t.number("window_s", 10.0, 0.0, 86_400.0),
    )

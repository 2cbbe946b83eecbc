"""The BLE bridge end to end: fake sensors at the bleak boundary, the REAL edge, a spool file.

Nothing of the server side is faked: uvicorn + Ray + Redis from tests/conftest.py. The
radio is ``tests/devices/fakeble.py``: bleak's scanner/client methods over simulated
sensors that notify real GATT payloads at their real rates, ten times faster than life.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.bridge import Assignment, Bridge, BridgeConfig, device_id
from devices.client import DevTokens
from devices.links import BleakLink, ScaledClock, SensorKind
from devices.spool import Spool
from sims.ble import HeartRateStrap, IndoorBike, PowerMeter, SpeedCadenceSensor, Wave
from tests.devices.fakeble import FakeAir

SPEED = 10.0
MAX_GAP_S = 5.0  # the edge's default; the server integrates energy over gaps up to it

ALICE_HR, ALICE_PM = "AA:00:00:00:00:01", "AA:00:00:00:00:02"
BOB_HR, BOB_CSC = "BB:00:00:00:00:01", "BB:00:00:00:00:02"
CAROL_BIKE = "CC:00:00:00:00:01"


def _sensors() -> list[Any]:
    return [
        HeartRateStrap(ALICE_HR, "HRM alice", hr_bpm=Wave(140, 15, 40)),
        PowerMeter(ALICE_PM, "PM alice", power_w=Wave(230, 50, 30)),
        HeartRateStrap(BOB_HR, "HRM bob", hr_bpm=Wave(125, 10, 50)),
        SpeedCadenceSensor(BOB_CSC, "CSC bob"),
        IndoorBike(CAROL_BIKE, "KICKR carol"),
    ]


def _assignments() -> tuple[Assignment, ...]:
    return (
        Assignment("alice", address=ALICE_HR),
        Assignment("alice", address=ALICE_PM.lower()),  # addresses match in any case
        Assignment("bob", name="HRM bob"),
        Assignment("bob", address=BOB_CSC),
        Assignment("carol", address=CAROL_BIKE),
    )


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens: the bridge is offline


def _operator(edge: Any) -> dict[str, str]:
    token = asyncio.run(DevTokens(edge.url)(kind="operator"))
    return {"Authorization": f"Bearer {token}"}


def _create(edge: Any, session: str) -> dict[str, str]:
    auth = _operator(edge)
    httpx.post(f"{edge.url}/v1/sessions", json={"id": session}, headers=auth).raise_for_status()
    return auth


def _config(url: str, session: str, spool: Path, assignments: tuple[Assignment, ...]) -> BridgeConfig:
    return BridgeConfig(
        url=url, session=session, assignments=assignments, spool_path=spool, name="studio",
        backoff_min_s=1.0, backoff_max_s=4.0, scan_timeout_s=1.0, rescan_interval_s=3.0,
    )


def _server_energy_kj(rows: list[list[Any]]) -> float:
    """What the session integrates: power × device-time gap (capped), in seq order."""
    energy, prev = 0.0, None
    for row in sorted(rows, key=lambda r: r[0]):
        ts, power = row[1], row[3]
        if prev is not None and power:
            energy += power * min(max(ts - prev, 0.0), MAX_GAP_S) / 1000.0
        prev = ts if prev is None else max(prev, ts)
    return energy


async def _until(clock: ScaledClock, air: FakeAir, at_s: float) -> None:
    await clock.sleep_until(air.origin + at_s)


async def _close_right_after_an_emit(bridge: Bridge, emitted: list[int]) -> dict[str, Any]:
    """Tear the bridge down just after a tick stored samples: they cannot be acked yet."""
    seen = len(emitted)
    while len(emitted) == seen:
        await asyncio.sleep(0.005)
    summary = bridge.summary()
    await bridge.close()
    return summary


def _on_disk(path: Path, session: str) -> dict[str, tuple[int, int]]:
    """Per device, as the spool file holds it: (next seq, samples still spooled)."""
    with Spool(path) as spool:
        return {r.device: (r.next_seq, r.spooled) for r in spool.streams(session)}


def _counts(summary: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A summary's per-participant counts, short enough for an assertion message."""
    keys = ("emitted", "emitted_total", "acked", "rejected", "spooled")
    return {p: {k: d[k] for k in keys} for p, d in summary["participants"].items()}


def test_bridge_offline_then_restart_loses_nothing(edge: Any, run: Any, unique_id: str, tmp_path: Path) -> None:
    session = f"bridge-{unique_id}"
    auth = _create(edge, session)
    clock = ScaledClock(SPEED, span_s=80.0)
    air = FakeAir(_sensors(), clock)
    air.refuse_first(CAROL_BIKE, 2)  # the trainer refuses the first connections
    air.drop(ALICE_PM, at_s=27.0, refuse_for_s=6.0)  # the power meter falls off mid-class
    spool_path = tmp_path / "bridge.sqlite"
    rows: dict[str, list[list[Any]]] = {}
    emitted: list[int] = []

    def on_emit(participant: str, row: list[Any]) -> None:
        rows.setdefault(participant, []).append(row)
        emitted.append(row[0])

    def make(url: str) -> Bridge:
        link = BleakLink(scanner_cls=air.scanner_cls, client_cls=air.client_cls, clock=clock)
        config = _config(url, session, spool_path, _assignments())
        return Bridge(config, link, on_emit=on_emit, tokens=DevTokens(edge.url))

    lives: list[tuple[dict[str, tuple[int, int]], dict[str, int]]] = []  # per device after each close: (on disk, seen)

    async def closed(bridge: Bridge) -> None:
        await bridge.close()
        on_disk = await asyncio.to_thread(_on_disk, spool_path, session)
        lives.append((on_disk, {device_id("studio", p): len(r) for p, r in rows.items()}))

    async def scenario() -> tuple[dict[str, Any], ...]:
        offline = make(_dead_url())  # 1. the edge is unreachable: everything is spooled
        await offline.start()
        await _until(clock, air, 15.0)
        first = offline.summary()
        await closed(offline)

        online = make(edge.url)  # 2. restart on the same spool, online, a sensor drops
        await online.start()
        await _until(clock, air, 45.0)
        second = await _close_right_after_an_emit(online, emitted)
        await closed(online)

        last = make(edge.url)  # 3. restart again with samples still unacked; finish; drain
        await last.start()
        await _until(clock, air, 60.0)
        await last.finish()
        drained = await last.drain(30.0)
        third = last.summary()
        await closed(last)
        return first, second, third, {"drained": drained}

    first, second, third, flags = run(scenario(), timeout=90)

    # every seq the spool gave out was seen by on_emit, life by life (a tick cut in half
    # by close() used to leave a row on disk that nobody counted)
    for life, (on_disk, seen) in enumerate(lives, 1):
        given = {d: next_seq - 1 for d, (next_seq, _) in on_disk.items()}
        assert given == {d: seen.get(d, 0) for d in given}, f"life {life}: spool gave out {given}, on_emit saw {seen}"
    assert first["acked"] == 0 and first["spooled"] == first["emitted"] > 0, _counts(first)
    disk, seen = lives[0]  # offline: everything emitted is still spooled
    assert {d: spooled for d, (_, spooled) in disk.items()} == {d: seen.get(d, 0) for d in disk}, lives[0]
    assert second["spooled"] > 0, _counts(second)  # torn down with samples not yet acknowledged
    assert flags["drained"], _counts(third)
    assert third["spooled"] == 0 and third["rejected"] == 0, _counts(third)
    observed = {p: len(r) for p, r in rows.items()}
    assert third["emitted_total"] == third["acked"] == sum(observed.values()), (_counts(third), observed)
    sensors = {s["address"]: s for s in second["sensors"]}
    assert sensors[ALICE_PM]["drops"] == 1 and sensors[ALICE_PM]["connects"] == 2, sensors[ALICE_PM]
    # the trainer refuses its first two attempts, whichever life makes them (a loaded
    # machine may get to the second one only after the first restart)
    refused = [{s["address"]: s["refused"] for s in life["sensors"]}.get(CAROL_BIKE, 0) for life in (first, second, third)]
    assert sum(refused) == 2, refused
    assert air.max_in_flight == 1, air.connect_attempts  # one scan-and-connect at a time
    assert all(len(uuids) == len(SensorKind) for uuids in air.scans), air.scans  # filtered by every service

    snap = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=auth).json()
    server = {p["participant"]: p for p in snap["participants"]}
    assert set(server) == {"alice", "bob", "carol"}
    for participant, sent in rows.items():
        seqs = [r[0] for r in sent]
        missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
        assert seqs == list(range(1, len(sent) + 1)), (participant, "missing", missing)  # seq survived both restarts
        got = {k: server[participant][k] for k in ("samples", "rejected", "energy_kj")}
        assert got["samples"] == len(sent), (participant, got, len(sent))
        assert got["rejected"] == 0, (participant, got)
        assert got["energy_kj"] == pytest.approx(_server_energy_kj(sent), abs=1e-6), (participant, got)
    # the merge: alice's strap + power meter in one stream, carol's trainer gives all five
    assert server["alice"]["hr_avg"] == pytest.approx(140, abs=4), server["alice"]
    assert server["alice"]["power_avg"] == pytest.approx(230, abs=15), server["alice"]
    assert server["bob"]["distance_m"] > 0 and server["bob"]["cadence_avg"] == pytest.approx(85, abs=3), server["bob"]
    assert server["carol"]["cadence_avg"] == pytest.approx(88, abs=3), server["carol"]
    on_disk = lives[-1][0]
    assert on_disk == {device_id("studio", p): (n + 1, 0) for p, n in observed.items()}, on_disk  # drained


def test_all_of_a_kind_makes_each_sensor_a_participant(
    edge: Any, run: Any, unique_id: str, tmp_path: Path
) -> None:
    session = f"allof-{unique_id}"
    auth = _create(edge, session)
    clock = ScaledClock(SPEED, span_s=40.0)
    air = FakeAir(
        [HeartRateStrap("DD:01", "Strap One"), HeartRateStrap("DD:02", "Strap Two"), PowerMeter("DD:03", "PM")],
        clock,
    )
    link = BleakLink(scanner_cls=air.scanner_cls, client_cls=air.client_cls, clock=clock)
    config = _config(edge.url, session, tmp_path / "s.sqlite", (Assignment(None, kind=SensorKind.HEART_RATE),))

    async def one_life(config: BridgeConfig, until_s: float, *, welcome_first: bool = False) -> dict[str, Any]:
        bridge = Bridge(config, link, tokens=DevTokens(edge.url))
        await bridge.start()
        if welcome_first:  # sensors connect only once the hub knows where the server is
            while bridge.hub is None or len(bridge.riders) < 2 or not bridge.hub.ready.is_set():
                await asyncio.sleep(0.01)
            for address in ("DD:01", "DD:02"):
                air.refuse(address, until_s=-1.0)
        # the life lasts at least until each strap gave a sample (on a loaded machine the
        # welcome can come after until_s: no tick would then follow it, nothing to check)
        while len(bridge.riders) < 2 or any(r.emitted == 0 for r in bridge.riders.values()):
            await asyncio.sleep(0.01)
        await clock.sleep_until(air.origin + until_s)
        await bridge.finish()
        assert await bridge.drain(30.0)
        summary = bridge.summary()
        await bridge.close()
        return summary

    summary = run(one_life(config, 12.0), timeout=60)
    assert set(summary["participants"]) == {"strap-one", "strap-two"}
    assert {s["address"] for s in summary["sensors"]} == {"DD:01", "DD:02"}  # the power meter is not a strap
    assert all(s["battery_pct"] == 87 for s in summary["sensors"])
    snap = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=auth).json()
    samples = {p["participant"]: p["samples"] for p in snap["participants"]}
    assert samples == {p: d["emitted"] for p, d in summary["participants"].items()}
    assert all(n >= 1 for n in samples.values()), samples

    # the spool file is lost: a new one must not reuse seqs the server already holds
    lost = replace(config, spool_path=tmp_path / "new.sqlite")
    for address in ("DD:01", "DD:02"):  # advertising, not connectable until the hub is welcomed
        air.refuse(address, until_s=float("inf"))
    again = run(one_life(lost, 30.0, welcome_first=True), timeout=60)
    assert again["seq_skips"] == 2, again
    snap = httpx.get(f"{edge.url}/v1/sessions/{session}", headers=auth).json()
    total = {p["participant"]: p["samples"] for p in snap["participants"]}
    assert total == {p: samples[p] + d["emitted"] for p, d in again["participants"].items()}


def test_scan_lists_type_name_rssi_and_battery(run: Any) -> None:
    clock = ScaledClock(SPEED)
    air = FakeAir([HeartRateStrap("EE:01", "Strap"), IndoorBike("EE:02", "Bike", battery_pct=55)], clock)
    link = BleakLink(scanner_cls=air.scanner_cls, client_cls=air.client_cls, clock=clock, read_battery_on_scan=True)

    adverts = run(link.scan([SensorKind.FITNESS_MACHINE], 1.0))
    assert [a.describe() for a in adverts] == [
        {"address": "EE:02", "name": "Bike", "kinds": ["fitness_machine"], "rssi": -62, "battery_pct": 55}
    ]
    assert air.scans == [[SensorKind.FITNESS_MACHINE.service]]
    assert SensorKind.FITNESS_MACHINE.service == "00001826-0000-1000-8000-00805f9b34fb"
    everything = run(link.scan([], 1.0))
    assert {(a.address, a.kinds[0].value, a.battery_pct) for a in everything} == {
        ("EE:01", "heart_rate", 87), ("EE:02", "fitness_machine", 55),
    }


def test_callbacks_from_another_thread_only_enqueue(run: Any, tmp_path: Path) -> None:
    """bleak may call back from its own thread: the sink hops onto the loop, in order."""
    clock = ScaledClock(1.0)
    air = FakeAir([HeartRateStrap("FF:01", "Strap")], clock)
    link = BleakLink(scanner_cls=air.scanner_cls, client_cls=air.client_cls, clock=clock)
    config = _config(_dead_url(), "s", tmp_path / "t.sqlite", (Assignment("p", address="FF:01"),))

    async def scenario() -> Bridge:
        bridge = Bridge(config, link)
        await bridge.start()
        while bridge.sensors.get("FF:01") is None or bridge.sensors["FF:01"].state.value != "connected":
            await asyncio.sleep(0.01)
        sensor = bridge.sensors["FF:01"]
        sink: Callable[[Any], None] = bridge._sink_for(sensor)
        from devices.links import Notification

        def from_thread() -> None:
            for bpm in range(100, 110):
                sink(Notification("FF:01", "00002a37-0000-1000-8000-00805f9b34fb", bytes([0, bpm]), clock.now()))

        before = sensor.notifications
        await asyncio.to_thread(from_thread)
        await asyncio.sleep(0.05)
        assert sensor.notifications - before >= 10
        await bridge.emit_now(clock.now())
        await bridge.close()
        return bridge

    bridge = run(scenario(), timeout=30)
    assert bridge.riders["p"].stream.unacked  # offline: kept for the next start


def _block_until_spooled(path: Path, rows: int) -> None:
    """Wait, *blocking the event loop*, until the spool file holds ``rows`` samples.

    The I/O thread commits meanwhile; its result cannot reach the awaiting coroutine
    until the loop runs again: a cancellation now lands after the append has happened.
    """
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for _ in range(10_000):
            if db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= rows:
                return
            time.sleep(0.001)
    raise AssertionError(f"the spool never held {rows} sample(s): the emit did not reach its append")


def test_an_emit_cancelled_while_the_spool_writes_still_records_the_row(run: Any, tmp_path: Path) -> None:
    """finish() cancels the ticker wherever it is; a row the spool has stored must be in
    the stream too (and seen by ``on_emit``), or the next start sends a sample nobody
    counted and the summary says "drained" with a row still on disk."""
    clock = ScaledClock(SPEED)
    air = FakeAir([HeartRateStrap("FF:02", "Strap")], clock)
    link = BleakLink(scanner_cls=air.scanner_cls, client_cls=air.client_cls, clock=clock)
    spool_path = tmp_path / "c.sqlite"
    config = replace(
        _config(_dead_url(), "s", spool_path, (Assignment("p", address="FF:02"),)),
        emit_interval_s=1e9,  # the ticker never ticks here: the test drives the one emit
    )
    seen: list[int] = []

    async def scenario() -> tuple[int, list[int], BaseException | int]:
        bridge = Bridge(config, link, on_emit=lambda _p, row: seen.append(row[0]))
        await bridge.start()
        while bridge.sensors.get("FF:02") is None or bridge.sensors["FF:02"].notifications == 0:
            await asyncio.sleep(0.01)
        with closing(sqlite3.connect(spool_path, isolation_level=None)) as writer:
            writer.execute("BEGIN IMMEDIATE")  # another writer: the spool's append must wait for it
            emitting = asyncio.get_running_loop().create_task(bridge.emit_now(clock.now()))
            for _ in range(10):  # loop turns: the emit reaches its append, waiting in the I/O thread
                await asyncio.sleep(0)
            writer.execute("ROLLBACK")
        _block_until_spooled(spool_path, 1)
        emitting.cancel()
        (outcome,) = await asyncio.gather(emitting, return_exceptions=True)
        stream = bridge.riders["p"].stream
        memory = stream.next_seq, sorted(stream.unacked)
        await bridge.close()
        return *memory, outcome

    next_seq, unacked, outcome = run(scenario(), timeout=30)
    assert isinstance(outcome, asyncio.CancelledError), outcome  # the cancellation is not swallowed
    with Spool(spool_path) as spool:
        (record,) = spool.streams("s")
        on_disk = [row[0] for row in spool.pending("s", record.device)]
    assert (next_seq, unacked) == (record.next_seq, on_disk) == (2, [1])
    assert seen == [1]


def test_config_file_and_flags_make_one_config(tmp_path: Path) -> None:
    from devices.bridge_cli import build_config, parser

    path = tmp_path / "studio.toml"
    path.write_text(
        'url = "http://127.0.0.1:8000"\nsession = "spin-0700"\nname = "studio-3"\nstale_after_s = 4.0\n'
        '[[sensors]]\naddress = "C4:7C:8D:6A:3B:21"\nparticipant = "alice"\n'
        '[[sensors]]\nname = "KICKR 1234"\nparticipant = "alice"\n'
        '[[sensors]]\nkind = "heart_rate"\n'
    )
    args = parser().parse_args([
        "run", "--config", str(path), "--session", "spin-0800", "--device", "AA:BB=bob", "--all-of", "csc",
        "--wheel-circumference-m", "2.096",
    ])
    config = build_config(args)
    assert (config.url, config.session, config.name) == ("http://127.0.0.1:8000", "spin-0800", "studio-3")
    assert config.ws_url == "ws://127.0.0.1:8000/v1/devices"
    assert config.spool_path == Path(".pulseline/bridge-studio-3.sqlite")
    assert (config.stale_after_s, config.wheel_circumference_m) == (4.0, 2.096)
    assert config.assignments == (
        Assignment("alice", address="C4:7C:8D:6A:3B:21"),
        Assignment("alice", name="KICKR 1234"),
        Assignment(None, kind=SensorKind.HEART_RATE),
        Assignment("bob", address="AA:BB"),
        Assignment(None, kind=SensorKind.CSC),
    )
    path.write_text('url = "x"\nsession = "y"\nbogus = 1\n')
    from devices.bridge import BridgeError

    with pytest.raises(BridgeError, match="unknown config keys: bogus"):
        build_config(parser().parse_args(["run", "--config", str(path)]))
    with pytest.raises(BridgeError, match="KEY=PARTICIPANT"):
        build_config(parser().parse_args(["run", "--url", "u", "--session", "s", "--device", "AA:BB"]))

"""``pulseline bridge``: scan for sensors, run the bridge, or replay a recording.

::

    pulseline bridge scan [--timeout-s 5] [--kind heart_rate ...] [--battery] [--json]
    pulseline bridge run --url URL --session ID [--config FILE]
                         [--device ADDRESS=participant ...] [--named "NAME=participant" ...]
                         [--all-of KIND ...] [--spool PATH] [--name BRIDGE] [--seconds N]
    pulseline bridge replay FILE [FILE ...] --url URL --session ID [--speed 10]
                         [--device ADDRESS=participant ...] [--spool PATH]

``run`` and ``replay`` print a JSON summary at the end (samples emitted, acked, rejected,
still spooled, per participant and per sensor). The config file format and every option
are in docs/devices.md ("Bridge").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import sys
import tomllib
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from devices.bridge import Assignment, Bridge, BridgeConfig, BridgeError, TokenMinter
from devices.links import BleakLink, LinkError, SensorKind
from devices.replay import Recording, RecordingError, ReplayLink
from devices.spool import SpoolError

log = logging.getLogger(__name__)

DEFAULT_SPOOL_DIR = Path(".pulseline")
_TUNABLES = {f.name for f in fields(BridgeConfig)} - {"url", "session", "assignments", "spool_path", "name", "token"}


class ConfigError(BridgeError):
    """A bridge config file or flag that cannot be used."""


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pulseline bridge", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="list sensors in range: type, name, RSSI, battery")
    scan.add_argument("--timeout-s", type=float, default=5.0)
    scan.add_argument("--kind", action="append", default=[], help="only this kind (repeatable)")
    scan.add_argument("--battery", action="store_true", help="connect briefly to read each battery level")
    scan.add_argument("--json", action="store_true")
    run = sub.add_parser("run", help="connect sensors and forward one sample per participant per second")
    _forwarding_args(run)
    run.add_argument("--config", type=Path, help="TOML or JSON file (flags add to / override it)")
    run.add_argument("--named", action="append", default=[], metavar="NAME=PARTICIPANT",
                     help="the sensor advertising exactly NAME belongs to PARTICIPANT")
    run.add_argument("--all-of", action="append", default=[], metavar="KIND",
                     help="every sensor of KIND, each its own participant (named after the sensor)")
    run.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    replay = sub.add_parser("replay", help="play recorded notifications through the bridge")
    replay.add_argument("files", nargs="+", type=Path)
    _forwarding_args(replay)
    replay.add_argument("--speed", type=float, default=1.0, help="playback speed (10 = ten times real time)")
    return root


def _forwarding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the edge, e.g. http://127.0.0.1:8000 (several, comma-separated: fail-over)")
    p.add_argument("--session", help="the session id (it must exist, or pass --create-session)")
    p.add_argument("--device", action="append", default=[], metavar="ADDRESS=PARTICIPANT")
    p.add_argument("--spool", type=Path, default=None, help="SQLite spool (default .pulseline/bridge-NAME.sqlite)")
    p.add_argument("--name", default=None, help="bridge name: device ids are bridge-NAME-PARTICIPANT")
    p.add_argument("--token", default=None, help="a hub token naming this bridge's devices (default: dev tokens)")
    p.add_argument("--create-session", action="store_true", help="POST /v1/sessions first (idempotent)")
    p.add_argument("--wheel-circumference-m", type=float, default=None)
    p.add_argument("--drain-timeout-s", type=float, default=30.0, help="how long to wait for the last acks")
    p.add_argument("--log-level", default="WARNING")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING").upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "scan":
            return asyncio.run(_scan(args))
        config = build_config(args)
        if args.command == "replay":
            recording = Recording.merge(Recording.read(f) for f in args.files)
            return asyncio.run(_replay(args, config, recording))
        return asyncio.run(_run(args, config))
    except (BridgeError, LinkError, SpoolError, RecordingError, OSError) as exc:
        print(f"pulseline bridge: {exc}", file=sys.stderr)
        return 2


# -- config ------------------------------------------------------------------------------
def load_file(path: Path) -> dict[str, Any]:
    """A TOML (``.toml``) or JSON config file as a dict."""
    try:
        text = path.read_text()
        return tomllib.loads(text) if path.suffix != ".json" else dict(json.loads(text))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, participant = text.rpartition("=")
    if not sep or not key or not participant:
        raise ConfigError(f"{flag} wants KEY=PARTICIPANT, got {text!r}")
    return key, participant


def _assignment(entry: dict[str, Any]) -> Assignment:
    kind = entry.get("kind")
    try:
        return Assignment(
            entry.get("participant"),
            address=entry.get("address"),
            name=entry.get("name"),
            kind=SensorKind.parse(kind) if kind else None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_config(args: argparse.Namespace) -> BridgeConfig:
    """The file (if any), then the flags on top: scalars override, sensors add up."""
    data = load_file(args.config) if getattr(args, "config", None) else {}
    sensors = list(data.get("sensors", []))
    sensors += [{"address": a, "participant": p} for a, p in (_pair(d, "--device") for d in args.device)]
    sensors += [{"name": n, "participant": p} for n, p in (_pair(d, "--named") for d in getattr(args, "named", []))]
    sensors += [{"kind": k} for k in getattr(args, "all_of", [])]
    url, session = args.url or data.get("url"), args.session or data.get("session")
    if not url or not session:
        raise ConfigError("--url and --session are required (or url / session in the config file)")
    name = args.name or data.get("name") or "bridge"
    spool = args.spool or data.get("spool") or DEFAULT_SPOOL_DIR / f"bridge-{name}.sqlite"
    unknown = set(data) - _TUNABLES - {"url", "session", "name", "spool", "token", "sensors"}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    config = BridgeConfig(
        url=url, session=session, assignments=tuple(_assignment(s) for s in sensors), spool_path=Path(spool),
        name=name, token=args.token or data.get("token"),
    )
    tunables = {k: v for k, v in data.items() if k in _TUNABLES}
    if args.wheel_circumference_m is not None:
        tunables["wheel_circumference_m"] = args.wheel_circumference_m
    return replace(config, **tunables)


def _tokens(config: BridgeConfig) -> TokenMinter | None:
    """Development tokens from the edge unless a token was given."""
    if config.token:
        return None
    from devices.client import DevTokens

    minter: TokenMinter = DevTokens(config.urls)
    return minter


async def _prepare(args: argparse.Namespace, config: BridgeConfig, tokens: TokenMinter | None) -> None:
    import httpx

    config.spool_path.parent.mkdir(parents=True, exist_ok=True)
    if not args.create_session:
        return
    headers = {}
    if tokens is not None:
        headers["Authorization"] = f"Bearer {await tokens(kind='operator')}"
    async with httpx.AsyncClient(base_url=config.urls[0].replace("ws", "http", 1), timeout=30, headers=headers) as http:
        try:
            response = await http.post("/v1/sessions", json={"id": config.session})
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot reach the edge at {config.urls[0]} to create session {config.session}: "
                              f"{type(exc).__name__}") from None
        if response.status_code >= 400:
            raise ConfigError(f"cannot create session {config.session}: HTTP {response.status_code} {response.text}")
    await _set_phase(config, tokens, "live")  # the class runs while the bridge feeds it


async def _set_phase(config: BridgeConfig, tokens: TokenMinter | None, phase: str) -> None:
    """Move the session the bridge created (``--create-session``) to ``phase``; a refusal
    (e.g. already past it) is logged, not fatal: the samples matter more."""
    import httpx

    headers = {"Authorization": f"Bearer {await tokens(kind='operator')}"} if tokens is not None else {}
    async with httpx.AsyncClient(base_url=config.urls[0].replace("ws", "http", 1), timeout=30, headers=headers) as http:
        try:
            response = await http.post(f"/v1/sessions/{config.session}/phase", json={"phase": phase})
        except httpx.HTTPError as exc:
            log.warning("bridge: could not set session %s to %s: %s", config.session, phase, type(exc).__name__)
            return
        if response.status_code >= 400:
            log.warning("bridge: session %s stays %s: HTTP %s", config.session, phase, response.status_code)


# -- commands ----------------------------------------------------------------------------
async def _scan(args: argparse.Namespace) -> int:
    kinds = [SensorKind.parse(k) for k in args.kind]
    adverts = await BleakLink(read_battery_on_scan=args.battery).scan(kinds, args.timeout_s)
    rows = [a.describe() for a in adverts]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'address':<40} {'kind':<18} {'rssi':>5} {'battery':>7}  name")
    for r in rows:
        battery = "" if r["battery_pct"] is None else f"{r['battery_pct']}%"
        rssi = "" if r["rssi"] is None else r["rssi"]
        print(f"{r['address']:<40} {','.join(r['kinds']):<18} {rssi:>5} {battery:>7}  {r['name'] or ''}")
    if not rows:
        print("(no sensor in range)")
    return 0


async def _run(args: argparse.Namespace, config: BridgeConfig) -> int:
    if not config.assignments:
        raise ConfigError("no sensors: pass --device, --named, --all-of or a config file with [[sensors]]")
    link = BleakLink()
    await link.scan([], 0.5)  # a missing adapter or BlueZ is an error now (ScanFailed: exit 2), not a warning every 10 s
    tokens = _tokens(config)
    await _prepare(args, config, tokens)
    bridge = Bridge(config, link, tokens=tokens)
    stop = asyncio.Event()
    _on_signals(stop.set)
    await bridge.start()
    try:
        await asyncio.wait_for(stop.wait(), args.seconds)
    except TimeoutError:
        pass
    rc = await _finish(bridge, args.drain_timeout_s, {})
    if bridge.totals()["emitted_total"] == 0:
        print("pulseline bridge: nothing was read from any sensor (none found, or none sent data): "
              "check `pulseline bridge scan`", file=sys.stderr)
        return 1
    return rc


async def _replay(args: argparse.Namespace, config: BridgeConfig, recording: Recording) -> int:
    if not config.assignments:
        config = replace(config, assignments=tuple(
            Assignment(d.participant, address=d.address) for d in recording.devices
        ))
    tokens = _tokens(config)
    await _prepare(args, config, tokens)
    link = ReplayLink(recording, speed=args.speed)
    bridge = Bridge(config, link, tokens=tokens)
    stop = asyncio.Event()
    _on_signals(stop.set)
    await bridge.start()
    ended = asyncio.ensure_future(link.wait_end())
    await asyncio.wait([ended, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if ended.done():  # let the ticker emit its last tick before the end
        interval = config.emit_interval_s
        await bridge.wait_tick(math.floor(ended.result() / interval) * interval)
    ended.cancel()
    extra = {"recording": {"files": [str(f) for f in args.files], "duration_s": recording.duration_s,
                           "speed": args.speed, "notifications": len(recording.notifications)}}
    rc = await _finish(bridge, args.drain_timeout_s, extra)
    if args.create_session:  # the class it created is over
        for phase in ("cooldown", "ended"):
            await _set_phase(config, tokens, phase)
    return rc


async def _finish(bridge: Bridge, drain_timeout_s: float, extra: dict[str, Any]) -> int:
    await bridge.finish()
    drained = await bridge.drain(drain_timeout_s)
    summary = {**bridge.summary(), "drained": drained, **extra}
    await bridge.close()
    print(json.dumps(summary, indent=2))
    return 0 if drained else 1


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass


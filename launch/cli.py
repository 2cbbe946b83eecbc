"""The ``pulseline`` command: up, edge, swarm, demo, bench.

* ``pulseline up`` — local Ray + embedded Redis + the edge on 127.0.0.1:8000 (or attach
  to ``REDIS_URL`` / ``RAY_ADDRESS``); Ctrl-C or SIGTERM shuts down what it started.
* ``pulseline up --edges N`` — the same with N edge processes (ports PORT..PORT+N-1).
  ``up`` supervises what it started: a dead redis-server or extra edge is restarted with
  back-off (``cluster.supervisor``; state in ``<data dir>/supervisor.json``).
* ``pulseline edge`` — an edge only, attached to ``RAY_ADDRESS`` and ``REDIS_URL`` (both
  required; run as many as you like, on any node, on different ports).
* ``pulseline status`` — the cluster's nodes, session slots used/free, the sessions on each
  node and pending autoscaler demand (attaches to ``RAY_ADDRESS``; ``--json`` for JSON).
* ``pulseline swarm --sessions S --devices N --seconds T`` — a simulated class against a
  running edge; prints the JSON accounting.
* ``pulseline demo`` — ``up`` plus a small swarm, prints the accounting and where to look.
* ``pulseline token --kind device --session S --participant P --device D`` — mint a
  development token (signed with the data dir's dev secret; see docs/security.md).
* ``pulseline bench`` — ``up`` plus a big swarm, with per-process CPU and memory.
* ``pulseline results export --since T --until T --format ndjson|parquet --out FILE`` — a
  time range of the results stream for a warehouse (``launch/results.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("pulseline")


class _DefaultsHelp(argparse.HelpFormatter):
    """Help with each flag's default, unless the help already says where it comes from."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address the edge listens on (default PULSELINE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="the edge's port (default PULSELINE_PORT or 8000)")
    _data_dir_arg(p)


def _data_dir_arg(p: argparse.ArgumentParser, what: str = "Redis AOF, dev secret, spool, lock") -> None:
    p.add_argument("--data-dir", default=None,
                   help=f"the stack's data directory: {what} (default PULSELINE_DATA_DIR or ./.pulseline)")


def _swarm_args(p: argparse.ArgumentParser, sessions: int, devices: int, seconds: float, board_hz: float) -> None:
    p.add_argument("--sessions", type=int, default=sessions, help="classes to run")
    p.add_argument("--devices", type=int, default=devices, help="simulated riders in all, spread over the classes")
    p.add_argument("--seconds", type=float, default=seconds, help="length of the class")
    p.add_argument("--board-hz", type=float, default=board_hz, help="rate of each class's latency-probe viewer (1-10)")
    p.add_argument("--hub-size", type=int, default=1, help="devices per connection (1 = phones)")
    p.add_argument("--dup-rate", type=float, default=0.0, help="fraction of sample frames sent twice (0-1)")
    p.add_argument("--bad-rate", type=float, default=0.0, help="fraction of samples with out-of-range values (0-1)")
    p.add_argument("--report", default=None, help="also write the JSON here")
    p.add_argument("--session-prefix", default=None, help="session ids are PREFIX-0..S-1 (default: a fresh random prefix)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pulseline", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Ray + Redis + the edge")
    _serve_args(up)
    up.add_argument("--edges", type=int, default=1,
                    help="edge processes in all: the extra ones serve on the next ports, on the same Ray + Redis")
    _serve_args(sub.add_parser("edge", help="an edge only, attached to RAY_ADDRESS and REDIS_URL"))
    status = sub.add_parser("status", help="nodes, session slots, sessions per node, autoscaler demand")
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    status.add_argument("--namespace", default=None, help="Ray namespace of the sessions (default PULSELINE_NAMESPACE)")
    status.add_argument("--data-dir", default=None, help="also show the supervisor of the stack on this data dir")
    swarm = sub.add_parser("swarm", help="run a simulated class against an edge")
    swarm.add_argument("--url", default="http://127.0.0.1:8000", help="the edge to drive")
    swarm.add_argument("scenario", nargs="?", default=None, help="a scenario file (sims/scenarios/*.toml)")
    swarm.add_argument("--out", default=None, help="write report.json and PNG plots into this directory")
    _swarm_args(swarm, 2, 20, 20.0, 10.0)
    demo = sub.add_parser("demo", help="up + a small swarm, then keep serving")
    _serve_args(demo)
    _swarm_args(demo, 2, 20, 180.0, 10.0)
    demo.add_argument("--once", action="store_true", help="stop after the swarm")
    demo.add_argument("--no-plan", action="store_true",
                      help="classes without a class plan (default: a plan of --seconds, starting 10 s after creation)")
    bridge = sub.add_parser("bridge", help="BLE bridge: scan, connect sensors, forward to an edge", add_help=False)
    bridge.add_argument("bridge_args", nargs=argparse.REMAINDER)
    token = sub.add_parser("token", help="mint a development token (docs/security.md)")
    token.add_argument("--kind", required=True, choices=["device", "hub", "participant", "operator", "viewer"],
                       help="viewer: view-only, one --session, short-lived (PULSELINE_VIEW_TOKEN_TTL_S)")
    token.add_argument("--session", action="append", default=None, help="a session the token is for (repeatable)")
    token.add_argument("--participant", default=None, help="the rider (device and participant tokens)")
    token.add_argument("--device", action="append", default=None, help="device (device token) or registered device (hub; repeatable)")
    token.add_argument("--hub", default=None, help="the hub's name (hub tokens)")
    token.add_argument("--ttl-s", type=float, default=None, help="lifetime (default PULSELINE_DEV_TOKEN_TTL_S)")
    _data_dir_arg(token, "where the running stack keeps its dev-secret")
    from launch.results import add_parser as add_results_parser

    add_results_parser(sub)
    bench = sub.add_parser("bench", help="up + a large swarm with process stats")
    _serve_args(bench)
    _swarm_args(bench, 10, 1000, 60.0, 10.0)
    for command in sub.choices.values():  # every flag shows its default in --help
        command.formatter_class = _DefaultsHelp
    return root


def _settings(args: argparse.Namespace) -> Any:
    from cluster.settings import from_environment

    data_dir = getattr(args, "data_dir", None)
    return from_environment(
        host=getattr(args, "host", None), port=getattr(args, "port", None), data_dir=Path(data_dir) if data_dir else None
    )


def _swarm_config(args: argparse.Namespace, url: str) -> Any:
    import uuid

    from sims.swarm import SwarmConfig

    return SwarmConfig(
        session_prefix=args.session_prefix or f"swarm-{uuid.uuid4().hex[:6]}",
        base_url=url, sessions=args.sessions, devices=args.devices, seconds=args.seconds,
        board_hz=args.board_hz, hub_size=args.hub_size, dup_rate=args.dup_rate, bad_rate=args.bad_rate,
    )


def _emit(result: dict[str, Any], report: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if report:
        Path(report).write_text(text + "\n")


async def _serve(settings: Any, after_start: Any = None) -> None:
    import uvicorn

    from api.app import create_app
    from api.limits import uvicorn_options

    from launch.logs import uvicorn_log_options

    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        lifespan="on", **uvicorn_options(settings), **uvicorn_log_options(settings),
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        await serving
        return
    if after_start is not None:
        try:
            await after_start(server)
        except BaseException:
            server.should_exit = True
            await serving
            raise
    await serving


def run_event_loop(choice: str, main: Any) -> Any:
    """Run ``main`` on uvloop (when chosen and installed) or on the stdlib loop.

    uvloop cuts the edge's per-frame cost (~49 vs ~75 us to receive a WebSocket frame
    here); awaiting Ray ObjectRefs works on it (checked with Ray 2.60)."""
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using the stdlib asyncio loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _start_stack(settings: Any) -> tuple[Any, str | None]:
    """The stack started, or why it could not be (Ray unreachable or refusing us): then
    nothing of it is left running (``Stack.start`` stops its redis-server)."""
    from launch.stack import Stack

    address = settings.ray_address
    problem = _ray_problem(address) if address else None  # (ray.init would retry for minutes)
    if problem is not None:
        return None, f"cannot attach to Ray at {address}: {problem}"
    try:
        return Stack(settings).start(), None
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, auth errors...
        if not address:
            return None, f"cannot start Ray: {_last_words(exc)}"
        return None, (f"cannot attach to Ray at {address}: {_last_words(exc)} (a Ray with token "
                      "authentication needs RAY_AUTH_MODE=token and its token: docs/cluster.md)")


def _raise_open_files_limit() -> None:
    """Every socket is a file: raise this process's soft limit on open files to its hard limit
    (1,024 by default on many systems: an edge would refuse connections past ~1,000 riders).
    Its children (redis-server, Ray, the extra edges) inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # (Linux's nr_open default)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %s to %s: %s", soft, target, exc)
            return
    if target < 16384:
        log.warning("open files are limited to %d here: at most ~%d connections per edge (raise it with "
                    "`ulimit -n` or LimitNOFILE= in a systemd unit)", hard, hard - 200)


def _last_words(exc: BaseException) -> str:
    """What went wrong, in one line: Ray's errors wrap the cause's traceback in their text."""
    cause = exc.__cause__ or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    said = lines[-1] if lines else type(cause).__name__
    return said if len(said) <= 200 else said[:197] + "..."


def _run_stack(args: argparse.Namespace, after_start: Any = None) -> int:
    from launch.stack import EdgeProcesses, supervise

    from api.auth import InsecureSettings, check_settings

    from launch.logs import configure_from

    settings = _settings(args)
    configure_from(settings)
    _raise_open_files_limit()
    try:
        check_settings(settings)
    except InsecureSettings as exc:
        print(f"pulseline: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    problem = _port_problem(settings.host, settings.port)
    lock = None
    if problem is None and args.command != "edge":
        lock, problem = _lock_data_dir(Path(settings.data_dir))
    if problem is not None:
        print(f"pulseline: refusing to start: {problem}", file=sys.stderr, flush=True)
        return 2
    stop_on_sigterm = lambda *_: (_ for _ in ()).throw(KeyboardInterrupt())  # noqa: E731
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        stack, problem = _start_stack(settings)
    except KeyboardInterrupt:  # stopped while Ray was starting (Stack.start stopped its Redis)
        stack, problem = None, "stopped while starting"
    # again: ray.init installed its own (sys.exit(15), skipping nothing but exiting 15)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    if stack is None:
        if lock is not None:
            lock.close()
        print(f"pulseline: refusing to start: {problem}", file=sys.stderr, flush=True)
        return 2
    extra = EdgeProcesses(settings)
    supervisor = None
    try:
        for note in stack.notes:
            print(f"pulseline: {note}", file=sys.stderr, flush=True)
        extra.start(getattr(args, "edges", 1))
        if args.command != "edge":  # an edge supervises nothing; `up` restarts what it started
            supervisor = supervise(stack, extra)
        for url in [f"http://{settings.host}:{settings.port}", *extra.urls]:
            print(f"pulseline: edge on {url}", file=sys.stderr, flush=True)
        run_event_loop(settings.event_loop, _serve(settings, after_start))
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor is not None:
            supervisor.stop()  # first: nothing is restarted while the stack stops
        extra.stop()
        stack.stop()
        if lock is not None:
            lock.close()
        print("pulseline: stopped", file=sys.stderr, flush=True)
    return 0


def _ray_problem(address: str) -> str | None:
    """Why the GCS at ``host:port`` cannot be reached (checked before ``ray.init``, which
    would retry for minutes); None for ``auto`` and ``ray://`` addresses or a GCS that answers."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return None
    except (OSError, ValueError) as exc:
        return f"nothing answers there ({getattr(exc, 'strerror', None) or exc})"


def _port_problem(host: str, port: int) -> str | None:
    """Why the edge could not listen on ``host:port``, found before anything is started."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve --host {host!r}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            return (f"port {port} on {host} is not available ({exc.strerror or exc}): another pulseline up or "
                    "another server is listening there; pass --port (or PULSELINE_PORT) or stop it")
    return None


def _lock_data_dir(data_dir: Path) -> tuple[Any, str | None]:
    """Hold ``data_dir/pulseline.lock`` while this stack runs: a second stack on the same
    data dir would start a second redis-server on the same append-only file."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "pulseline.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open for the stack's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        return None, (f"data dir {data_dir.resolve()} is in use by another pulseline stack (pid {holder}); "
                      "stop it, or pass another --data-dir (or PULSELINE_DATA_DIR)")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle, None


def _demo(args: argparse.Namespace) -> int:
    from sims.swarm import run_swarm

    async def after_start(server: Any) -> None:
        url = f"http://{server.config.host}:{server.config.port}"
        config = _swarm_config(args, url)
        config.display_names = True  # boards show names, not ids
        if not args.no_plan:  # the classes run themselves: lobby, segments with cues, ended
            config.class_plan, config.plan_start_in_s = demo_plan(args.seconds), DEMO_LOBBY_S
        sessions = [f"{config.session_prefix}-{i}" for i in range(config.sessions)]
        await _create_demo_classes(args, url, sessions)
        _print_where_to_look(args, url, sessions)
        when = "" if args.no_plan else f", follows its plan from {DEMO_LOBBY_S:g} s from now (lobby until then)"
        print(f"pulseline: the class runs for {args.seconds:g} s{when} ({args.devices} simulated riders); "
              "Ctrl-C stops everything", file=sys.stderr, flush=True)
        result = await run_swarm(config)
        _emit(result, args.report)
        if args.once:
            server.should_exit = True
        else:
            print(f"pulseline: the class is over (accounting above); still serving on {url}, Ctrl-C to stop",
                  file=sys.stderr, flush=True)

    return _run_stack(args, after_start)


DEMO_LOBBY_S = 10.0  # a demo class opens in the lobby and starts this long after creation


def demo_plan(seconds: float) -> dict[str, Any]:
    """The demo classes' plan, ``seconds`` long: warm-up, two intervals around a recovery,
    cool-down, each with targets and a cue (docs/protocol.md, "The class plan")."""
    parts = (
        ("warm-up", 0.25, {"ftp_pct": [50, 65], "cadence_rpm": [80, 95]}, "Easy spin, find your legs"),
        ("interval", 0.2, {"power_zone": [4, 5], "cadence_rpm": [90, 105]}, "Push! Zone 4 to 5"),
        ("recovery", 0.15, {"power_zone": [1, 2]}, "Recover, keep the legs turning"),
        ("interval", 0.2, {"ftp_pct": [105, 120]}, "Last one, out of the saddle"),
        ("cool-down", 0.2, {"power_zone": 1}, "Breathe. Well ridden"),
    )
    return {"segments": [{"kind": kind, "duration_s": max(5, round(seconds * share)), **targets, "cue": cue}
                         for kind, share, targets, cue in parts]}


async def _create_demo_classes(args: argparse.Namespace, url: str, sessions: list[str]) -> None:
    """The demo's classes, created before the swarm (which then finds them) so they have titles."""
    import httpx

    headers = {"Authorization": f"Bearer {_mint(args, kind='operator')}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        for n, sid in enumerate(sessions, 1):
            (await http.post("/v1/sessions", json={"id": sid, "title": f"Demo ride {n}"})).raise_for_status()


def _print_where_to_look(args: argparse.Namespace, url: str, sessions: list[str]) -> None:
    """Links that open in a browser as they are: view-only tokens in the fragment, never an
    operator token in a URL; the operator routes are shown as commands with a header."""
    from api.pages import view_path

    sid = sessions[0]
    viewer = _mint(args, kind="viewer", sessions=[sid])
    data_dir = Path(_settings(args).data_dir).resolve()
    token_cmd = f"$(.venv/bin/pulseline token --kind operator --data-dir {data_dir})"
    print(
        "\nwhere to look (open in a browser):\n"
        f"  the live class:       {url}{view_path(sid, viewer)}\n"
        f"  one rider's view:     {url}{view_path(sid, viewer, participant=f'{sid}-p0')}\n"
        f"  every class running:  {url}/\n"
        f"  API docs:             {url}/docs\n"
        "with an operator token (in a header, as the API wants it):\n"
        f"  curl -H \"Authorization: Bearer {token_cmd}\" {url}/v1/sessions/{sid}\n"
        f"  curl -H \"Authorization: Bearer {token_cmd}\" {url}/metrics\n",
        file=sys.stderr, flush=True,
    )


def _bench(args: argparse.Namespace) -> int:
    from launch.bench import bench_after_start

    return _run_stack(args, bench_after_start(args, _swarm_config, _emit))


def _edge(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.ray_address or not settings.redis_url:
        print("pulseline edge: set RAY_ADDRESS and REDIS_URL (an edge starts neither)", file=sys.stderr)
        return 2
    return _run_stack(args)


def _status(args: argparse.Namespace) -> int:
    import os

    from cluster.supervisor import format_state, read_state

    settings = _settings(args)
    supervised = read_state(settings.data_dir)
    if supervised is not None and not args.json:
        print(format_state(supervised), flush=True)
    stack_ray = supervised.get("ray_address") if supervised and supervised.get("alive") else None  # the stack on --data-dir
    if supervised is not None and stack_ray is None and not settings.ray_address:
        # the stack on this data dir is stopped: say so, rather than attach to whatever Ray runs here
        if args.json:
            print(json.dumps({"supervisor": supervised}, indent=2), flush=True)
        print(f"pulseline status: the stack on {settings.data_dir} is not running (start it: pulseline up); "
              "set RAY_ADDRESS to look at another cluster", file=sys.stderr, flush=True)
        return 1
    address = settings.ray_address or stack_ray or "auto"
    if address == stack_ray:  # before Ray is imported: it reads this once
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # a local stack's Ray 2.60 default (docs/cluster.md)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray

    from cluster.status import cluster_status, format_status

    problem = _ray_problem(address)
    if problem is None:
        try:
            ray.init(address=address, namespace=settings.namespace, log_to_driver=False,
                     logging_level=logging.WARNING)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, auth errors...
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if problem is not None:
        print(f"pulseline status: cannot attach to Ray at {address}: {problem}; start a stack (pulseline up), "
              "or point RAY_ADDRESS (or --data-dir) at a running one", file=sys.stderr, flush=True)
        return 2
    try:
        status = cluster_status(args.namespace or settings.namespace)
    finally:
        ray.shutdown()
    if supervised is not None:
        status["supervisor"] = supervised
    print(json.dumps(status, indent=2) if args.json else format_status(status), flush=True)
    return 0


def _mint(args: argparse.Namespace, **claims: Any) -> str:
    from api.auth import dev_token

    return dev_token(_settings(args), **claims)


def _token(args: argparse.Namespace) -> int:
    """Print a development token for the edge that uses the same data dir (or secret)."""
    from api.auth import InsecureSettings

    devices = args.device or []
    claims: dict[str, Any] = {"kind": args.kind, "sessions": args.session, "participant": args.participant,
                              "hub": args.hub, "ttl_s": args.ttl_s}
    if args.kind == "hub":
        claims["devices"] = devices
    elif devices:
        claims["device"] = devices[0]
    problem = _token_problem(args)
    if problem is not None:
        print(f"pulseline token: {problem}", file=sys.stderr, flush=True)
        return 2
    try:
        print(_mint(args, **claims), flush=True)
    except (InsecureSettings, ValueError) as exc:
        print(f"pulseline token: {_flag_names(str(exc))}", file=sys.stderr, flush=True)
        return 2
    return 0


_CLAIM_FLAGS = {"'sessions'": "--session", "'participant'": "--participant", "'device'": "--device",
                "'devices'": "--device", "'hub'": "--hub"}


def _flag_names(message: str) -> str:
    """A claim's name in an error replaced by the flag that sets it."""
    for claim, flag in _CLAIM_FLAGS.items():
        message = message.replace(f"claim {claim}", flag)
    return message


def _token_problem(args: argparse.Namespace) -> str | None:
    """Refuse what would mint a token no edge accepts: missing flags, or a data dir without
    the stack's secret (a new secret would be generated, and its tokens refused)."""
    needs = {"device": ("session", "participant", "device"), "hub": ("hub", "device"),
             "participant": ("participant",), "viewer": ("session",)}
    missing = [f"--{name}" for name in needs.get(args.kind, ()) if not getattr(args, name)]
    if missing:
        return f"--kind {args.kind} needs {' and '.join(missing)}"
    if args.kind == "viewer" and len(args.session) != 1:
        return "--kind viewer takes exactly one --session"
    settings = _settings(args)
    secret = Path(settings.data_dir) / "dev-secret"
    if settings.auth_secret is None and not secret.exists():
        return (f"no development secret at {secret.resolve()}: point --data-dir (or PULSELINE_DATA_DIR) at the "
                "data dir of the running `pulseline up` (default .pulseline in the directory it was started from)")
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        return _command(argv)
    except BrokenPipeError:  # `pulseline status | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 141  # 128 + SIGPIPE, as a shell reports a command whose pipe closed


def _command(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bridge"]:  # its own parser, options included (argparse REMAINDER drops a leading --flag)
        from devices.bridge_cli import main as bridge_main

        return int(bridge_main(argv[1:]))
    args = parser().parse_args(argv)
    if args.command == "up":
        return _run_stack(args)
    if args.command == "edge":
        return _edge(args)
    if args.command == "status":
        return _status(args)
    if args.command == "swarm":
        from sims.command import swarm_command

        return swarm_command(args, _swarm_config, _emit)
    if args.command == "demo":
        return _demo(args)
    if args.command == "token":
        return _token(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "results":
        from launch.results import export_command

        from cluster.supervisor import read_state

        settings = _settings(args)
        stack = read_state(settings.data_dir) or {}
        embedded = stack.get("redis_url") if stack.get("alive") else None  # `pulseline up` on this data dir
        return export_command(args, args.redis_url or settings.redis_url or embedded, args.prefix or settings.prefix)
    if args.command == "bridge":
        from devices.bridge_cli import main as bridge_main

        return int(bridge_main(args.bridge_args))
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""``pulseline results export``: a time range of the results stream as NDJSON or Parquet.

``--since`` / ``--until`` take ISO 8601 times (``2026-12-06T20:00:00Z``; no zone: UTC) or
epoch seconds; ``--until`` defaults to now, ``--since`` to 24 h before it. Redis comes from
``--redis-url``, else ``REDIS_URL`` / ``PULSELINE_REDIS_URL`` (``pulseline up`` prints the URL
of its embedded Redis). ``--out -`` (the default) writes NDJSON to stdout; Parquet needs a
file. The exit status is 2 for bad arguments (with the reason on stderr), 0 otherwise; the
count of rows written goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path

from history import results_stream
from storage.checkpoint import client_for


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    results = sub.add_parser("results", help="the results stream (docs/results-stream.md)")
    actions = results.add_subparsers(dest="results_command", required=True)
    export = actions.add_parser("export", help="write a time range of the results stream as NDJSON or Parquet")
    export.add_argument("--since", default=None, help="ISO 8601 time or epoch seconds (default: 24 h before --until)")
    export.add_argument("--until", default=None, help="ISO 8601 time or epoch seconds (default: now)")
    export.add_argument("--format", choices=results_stream.FORMATS, default="ndjson", help="output format")
    export.add_argument("--out", default="-", help="output file ('-': stdout, NDJSON only)")
    export.add_argument("--redis-url", default=None,
                        help="default: REDIS_URL / PULSELINE_REDIS_URL, else the embedded Redis of the stack running on --data-dir")
    export.add_argument("--data-dir", default=None, help="the data dir of a running `pulseline up` (default: PULSELINE_DATA_DIR or .pulseline)")
    export.add_argument("--prefix", default=None, help="key prefix (default: PULSELINE_PREFIX or pl)")


def parse_time(text: str) -> float:
    """Epoch seconds from an ISO 8601 time (UTC when it has no zone) or a number."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def export_command(args: argparse.Namespace, redis_url: str | None, prefix: str) -> int:
    try:
        until = parse_time(args.until) if args.until else time.time()
        since = parse_time(args.since) if args.since else until - 86400.0
        if not redis_url:
            raise ValueError("no Redis: pass --redis-url, set REDIS_URL, or start the stack (pulseline up) on --data-dir")
        if args.format == "parquet" and args.out == "-":
            raise ValueError("parquet is binary: pass --out FILE")
    except ValueError as exc:
        print(f"pulseline results export: {exc}", file=sys.stderr)
        return 2

    async def fetch() -> list[dict[str, object]]:
        client = client_for(redis_url)
        try:
            return await results_stream.read_range(client, prefix, since_ms=int(since * 1000), until_ms=int(until * 1000))
        finally:
            await client.aclose()

    try:
        rows = asyncio.run(fetch())
        n = results_stream.write(rows, args.format, sys.stdout if args.out == "-" else Path(args.out))
    except results_stream.ExportError as exc:
        print(f"pulseline results export: {exc}", file=sys.stderr)
        return 2
    print(f"{n} result(s) written", file=sys.stderr)
    return 0

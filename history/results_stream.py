"""The results stream: every ride result, class result and personal record, as entries of one
Redis Stream, for a platform's warehouse and real-time analytics (docs/results-stream.md).

Key: ``{p}:results:{stream}`` (its own cluster hash tag: one stream, one slot). Entry fields
(all text; schema version ``v``):

==========  =====================================================================
field       content
==========  =====================================================================
``v``       schema version, ``"1"``
``type``    ``ride.recorded``, ``ride.revised``, ``class.result``, ``record.set``
``at``      when it was written, epoch milliseconds
``session`` the class id
``rider``   the rider (empty for ``class.result``)
``data``    JSON: the ride summary (with ``revision``), the class result, or the record
==========  =====================================================================

The entry id (Redis's ``ms-seq``) orders entries; consumers read with ``XREADGROUP`` in a
consumer group and ``XACK`` what they stored (at-least-once: a consumer that died re-reads
its pending entries from id ``0``). Retention: each ``XADD`` trims entries older than
``retention_s`` (``MINID ~``, default 7 days) and keeps at most ``maxlen`` (``MAXLEN`` is
applied by a second ``XTRIM ~``), so the stream is bounded either way.

``export`` writes a time range as NDJSON or Parquet (pyarrow) for a warehouse load: one
row per entry with ``stream_id``, ``v``, ``type``, ``at`` (ms), ``session``, ``rider`` and
``data`` (the JSON text in Parquet, the object in NDJSON).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from history.errors import HistoryError
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

SCHEMA_VERSION = "1"
DEFAULT_RETENTION_S = 7 * 86400.0
DEFAULT_MAXLEN = 1_000_000
EVENT_TYPES = ("ride.recorded", "ride.revised", "class.result", "record.set")
FORMATS = ("ndjson", "parquet")
COLUMNS = ("stream_id", "v", "type", "at", "session", "rider", "data")


class ExportError(HistoryError, ValueError):
    """An export that cannot run (bad range or format; the message says which)."""


def stream_key(prefix: str) -> str:
    return f"{key_base(prefix, 'results', 'stream')}"


def entry(kind: str, session: str, data: Mapping[str, Any], *, rider: str = "", now: float | None = None) -> dict[str, str]:
    """One stream entry's fields (see the module docstring)."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown results event type {kind!r}")
    return {"v": SCHEMA_VERSION, "type": kind, "at": str(int((time.time() if now is None else now) * 1000)),
            "session": session, "rider": rider, "data": json.dumps(data, separators=(",", ":"), sort_keys=True)}


async def publish(client: AsyncRedis, prefix: str, entries: Iterable[Mapping[str, str]], *,
                  retention_s: float = DEFAULT_RETENTION_S, maxlen: int = DEFAULT_MAXLEN,
                  approximate: bool = True) -> list[str]:
    """``XADD`` the entries (one pipeline), trimming by age and length; returns their ids.
    ``approximate`` (``~``, Redis trims whole nodes: cheap) is what production wants."""
    key = stream_key(prefix)
    items = list(entries)
    if not items:
        return []
    min_id = max(0, int((time.time() - retention_s) * 1000)) if retention_s > 0 else None
    async with client.pipeline(transaction=False) as pipe:
        for fields in items:
            if min_id is not None:
                pipe.xadd(key, dict(fields), minid=min_id, approximate=approximate)  # type: ignore[arg-type]
            else:
                pipe.xadd(key, dict(fields))  # type: ignore[arg-type]
        if maxlen > 0:
            pipe.xtrim(key, maxlen=maxlen, approximate=approximate)
        replies = await pipe.execute()
    return [_text(r) for r in replies[: len(items)]]


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


def row(stream_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """A stream entry as an export row."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    return {"stream_id": _text(stream_id), "v": text.get("v", ""), "type": text.get("type", ""),
            "at": int(text.get("at", "0")), "session": text.get("session", ""), "rider": text.get("rider", ""),
            "data": text.get("data", "null")}


async def read_range(client: AsyncRedis, prefix: str, *, since_ms: int, until_ms: int,
                     batch: int = 1000) -> list[dict[str, Any]]:
    """Every entry with an id time in ``[since_ms, until_ms]``, oldest first."""
    if until_ms < since_ms:
        raise ExportError(f"--until ({until_ms}) is before --since ({since_ms})")
    key, start, rows = stream_key(prefix), f"{since_ms}-0", []
    while True:
        got: list[Any] = list(await client.xrange(key, min=start, max=f"{until_ms}-18446744073709551615",
                                                  count=batch) or [])
        rows += [row(i, f) for i, f in got]
        if len(got) < batch:
            return rows
        start = "(" + _text(got[-1][0])


def write(rows: list[dict[str, Any]], fmt: str, out: Path | IO[str]) -> int:
    """Write ``rows`` as NDJSON or Parquet; returns how many."""
    if fmt == "ndjson":
        lines = "".join(json.dumps({**r, "data": json.loads(r["data"])}, separators=(",", ":")) + "\n" for r in rows)
        if isinstance(out, Path):
            out.write_text(lines)
        else:
            out.write(lines)
        return len(rows)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not isinstance(out, Path):
            raise ExportError("parquet needs --out FILE (it is binary)")
        schema = pa.schema([("stream_id", pa.string()), ("v", pa.string()), ("type", pa.string()),
                            ("at", pa.timestamp("ms", tz="UTC")), ("session", pa.string()), ("rider", pa.string()),
                            ("data", pa.string())])
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, out)
        return len(rows)
    raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")

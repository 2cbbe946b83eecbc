"""Rename the Redis keys of a version before the cluster hash tags to the tagged names.

    .venv/bin/python scripts/migrate_hash_tags.py redis://127.0.0.1:6379/0 --prefix pl [--apply]

Sessions' keys were ``{p}:session:ID:{meta,ckpt,ckpt_epoch,epoch}`` and leaderboard shards'
``{p}:lbshard:BOARD:GEN:SHARD:{epoch,ckpt,ckpt_epoch,log}``; they are now
``{p}:session:{ID}:...`` and ``{p}:lbshard:{BOARD:GEN:SHARD}:...`` (docs/cluster.md, "Redis
Cluster and Sentinel"). Run it against the old, single Redis with the stack stopped, before
starting the new version (then move to a cluster, if that is the plan). Without ``--apply``
it only prints what it would rename. ``RENAMENX`` keeps each key's TTL and never overwrites
a tagged key that already exists (reported as a conflict). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.checkpoint import key_base  # noqa: E402
from storage.redis_url import Topology, connect_sync, parse  # noqa: E402

SUFFIXES = {"session": ("meta", "ckpt", "ckpt_epoch", "epoch"), "lbshard": ("epoch", "ckpt", "ckpt_epoch", "log")}


def tagged_name(key: str, prefix: str) -> str | None:
    """The tagged name of an old key of ``prefix``, or None if it is not one."""
    for kind, suffixes in SUFFIXES.items():
        head = f"{prefix}:{kind}:"
        if not key.startswith(head) or "{" in key or "}" in key:
            continue
        ident, _, suffix = key[len(head):].rpartition(":")
        if ident and suffix in suffixes:
            return f"{key_base(prefix, kind, ident)}:{suffix}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("redis_url", help="the old single Redis (redis://...)")
    parser.add_argument("--prefix", default="pl")
    parser.add_argument("--apply", action="store_true", help="rename (default: only print the plan)")
    args = parser.parse_args()
    if parse(args.redis_url).topology is not Topology.SINGLE:
        parser.error("migrate on the old single Redis (redis://...), before moving to a cluster")
    renamed, conflicts, planned = 0, [], []
    with connect_sync(args.redis_url) as client:
        for raw in client.scan_iter(match=f"{args.prefix}:*", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            new = tagged_name(key, args.prefix)
            if new is None:
                continue
            planned.append([key, new])
            if args.apply:
                if client.renamenx(key, new):
                    renamed += 1
                else:
                    conflicts.append(key)
    print(json.dumps({"applied": args.apply, "keys": len(planned), "renamed": renamed, "conflicts": conflicts,
                      "sample": planned[:5]}, indent=2))
    return 1 if conflicts else 0


if __name__ == "__main__":
    sys.exit(main())

"""``scripts/migrate_hash_tags.py`` renames a version's untagged keys to the hash-tagged names
the code reads now: plan first, then ``--apply``; TTLs kept; other keys untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from cluster.session_records import session_keys
from leaderboards.shard_actor import shard_keys

ROOT = Path(__file__).resolve().parents[2]


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "migrate_hash_tags.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_old_keys_get_their_tags_and_keep_their_ttl(redis_server: Any, unique_id: str) -> None:
    prefix = f"mig{unique_id}"
    client = redis.Redis.from_url(redis_server.url)
    client.hset(f"{prefix}:session:spin:07.00:meta", "created_at", "1")  # an id with ':' and '.'
    client.set(f"{prefix}:session:spin:07.00:ckpt", b"state", ex=3600)
    client.set(f"{prefix}:lbshard:ftp:0:1:log", b"entry")
    client.set(f"{prefix}:sessions", b"not a session key")
    plan = _script(redis_server.url, "--prefix", prefix)
    assert plan.returncode == 0 and json.loads(plan.stdout)["keys"] == 3 and not json.loads(plan.stdout)["applied"]
    assert client.exists(f"{prefix}:session:spin:07.00:ckpt")  # a plan changes nothing

    done = _script(redis_server.url, "--prefix", prefix, "--apply")
    assert done.returncode == 0 and json.loads(done.stdout)["renamed"] == 3, done.stdout
    meta, ckpt = session_keys(prefix, "spin:07.00")[:2]
    assert client.hget(meta, "created_at") == b"1" and client.get(ckpt) == b"state" and 0 < client.ttl(ckpt) <= 3600
    assert client.get(shard_keys(prefix, "ftp", 1, 0)[3]) == b"entry"
    assert client.get(f"{prefix}:sessions") == b"not a session key"
    assert json.loads(_script(redis_server.url, "--prefix", prefix).stdout)["keys"] == 0  # nothing left to do


def test_it_refuses_a_cluster_url() -> None:
    refused = _script("redis+cluster://127.0.0.1:1", "--apply")
    assert refused.returncode == 2 and "before moving to a cluster" in refused.stderr

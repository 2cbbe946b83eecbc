"""Redis clients from a URL: one redis-server, a Redis Cluster, or a Sentinel-managed master.

Every Redis client of pulseline (actors, edge, cluster tools) is made here, so the URL alone
selects the topology (docs/cluster.md):

==================================================================  ==========================
URL                                                                 client
==================================================================  ==========================
``redis://[user:pass@]host:port[/db]``, ``rediss://``, ``unix://``  one server (redis-py's own
                                                                    URL rules)
``redis+cluster://[user:pass@]host:port[,host:port...][/]``          ``RedisCluster`` (startup
                                                                    nodes; db must be 0)
``redis+sentinel://[user:pass@]host:port[,host:port...]/service``    the master of ``service``
                                                                    as the sentinels see it
==================================================================  ==========================

``rediss+cluster://`` and ``rediss+sentinel://`` are the TLS forms. Query options read here
(and removed before redis-py sees the URL):

* ``wait_replicas=N`` (default 0): a fenced checkpoint write (``storage.checkpoint``) is
  only durable once ``N`` replicas of its primary have it (Redis ``WAIT``, on the same
  connection as the write); with ``N >= 1`` a primary killed right after an ack cannot take
  the acknowledged data with it when a replica is promoted.
* ``wait_timeout_ms=T`` (default 1000): how long such a ``WAIT`` may block.
* ``sentinel_password=...`` (Sentinel only): the sentinels' own password; the userinfo
  password is the master's.

``parse`` raises ``RedisUrlError`` (a ``ValueError``) that says what is wrong with a URL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode
from redis.sentinel import Sentinel

AsyncRedis: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"
SyncRedis: TypeAlias = "redis.Redis | redis.RedisCluster"

DEFAULT_PORT = 6379
DEFAULT_WAIT_TIMEOUT_MS = 1000
_OURS = ("wait_replicas", "wait_timeout_ms", "sentinel_password")


class RedisUrlError(ValueError):
    """A Redis URL pulseline cannot use; the message says why."""


class Topology(enum.Enum):
    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL (see the module docstring)."""

    topology: Topology
    url: str = field(repr=False)  # for SINGLE: the URL redis-py gets (our options removed)
    nodes: tuple[tuple[str, int], ...] = ()  # cluster startup nodes or sentinels
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    wait_replicas: int = 0
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where to probe for an answer (the server, the cluster seeds or the sentinels)."""
        if self.topology is not Topology.SINGLE:
            return list(self.nodes)
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return []
        return [(parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT)]


def parse(url: str) -> RedisTarget:
    """The target a URL names; ``RedisUrlError`` for anything pulseline cannot use."""
    if not url:
        raise RedisUrlError("no Redis URL given")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    ours = {k: query.pop(k) for k in _OURS if k in query}
    wait_replicas = _int_option(ours, "wait_replicas", 0)
    wait_timeout_ms = _int_option(ours, "wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS)
    if scheme in ("redis", "rediss", "unix"):
        if "sentinel_password" in ours:
            raise RedisUrlError("sentinel_password only applies to redis+sentinel:// URLs")
        plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
        return RedisTarget(Topology.SINGLE, plain, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
    base, _, kind = scheme.partition("+")
    if base not in ("redis", "rediss") or kind not in ("cluster", "sentinel"):
        raise RedisUrlError(
            f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
            "redis+cluster:// or redis+sentinel://"
        )
    if query:
        raise RedisUrlError(f"unknown option(s) {', '.join(sorted(query))} in a {kind} URL: "
                            f"only {', '.join(_OURS)} are read there")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    nodes = _nodes(hosts, url)
    path = [p for p in parts.path.split("/") if p]
    common: dict[str, Any] = {
        "url": url, "nodes": nodes, "username": username, "password": password, "tls": base == "rediss",
        "wait_replicas": wait_replicas, "wait_timeout_ms": wait_timeout_ms,
    }
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise RedisUrlError("a Redis Cluster has only database 0: drop the path from the URL")
        if "sentinel_password" in ours:
            raise RedisUrlError("sentinel_password only applies to redis+sentinel:// URLs")
        return RedisTarget(Topology.CLUSTER, **common)
    if not path or len(path) > 2:
        raise RedisUrlError("a Sentinel URL names its service: redis+sentinel://host:port,host:port/SERVICE[/db]")
    db = _int(path[1], "database") if len(path) == 2 else 0
    return RedisTarget(Topology.SENTINEL, service=unquote(path[0]), db=db,
                       sentinel_password=ours.get("sentinel_password"), **common)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, sep, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if sep else None)


def _nodes(hosts: str, url: str) -> tuple[tuple[str, int], ...]:
    found: list[tuple[str, int]] = []
    for item in (h.strip() for h in hosts.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            host, port = item, str(DEFAULT_PORT)
        found.append((host.strip("[]"), _int(port, f"port of {item!r}")))
    if not found:
        raise RedisUrlError(f"no host:port in the Redis URL {redact(url)!r}")
    return tuple(found)


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RedisUrlError(f"the {what} in a Redis URL must be a number, not {text!r}") from None
    if value < 0:
        raise RedisUrlError(f"the {what} in a Redis URL must not be negative")
    return value


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    return _int(options[name], name) if name in options else default


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit((parts.scheme, f"{userinfo.partition(':')[0]}:***@{hosts}", parts.path, parts.query, ""))


# -- clients ------------------------------------------------------------------------------


POOL_SIZE = 256  # connections an asyncio client keeps to one server at most (a burst waits for one)
POOL_WAIT_S = 5.0  # how long a command waits for a free connection when none was given


def connect(url: str | RedisTarget, *, pool_size: int = POOL_SIZE, **options: Any) -> AsyncRedis:
    """An asyncio client for the URL; ``options`` are redis-py client options
    (``socket_timeout``, ``retry``, ...) applied to every connection it makes.

    At most ``pool_size`` connections to a server: a command issued while all are busy waits
    for one (up to ``socket_timeout``, else ``POOL_WAIT_S``) instead of failing at once as
    redis-py's default pool does past 100 (``MaxConnectionsError``: an edge whose 3,000
    phones connect at once issues more than 100 commands at a time). A Sentinel master's
    pool cannot wait; it is given ``pool_size`` connections as its limit."""
    target = url if isinstance(url, RedisTarget) else parse(url)
    if target.topology is Topology.SINGLE:
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url, max_connections=pool_size, timeout=options.get("socket_timeout") or POOL_WAIT_S, **options)
        return aioredis.Redis.from_pool(pool)
    if target.topology is Topology.CLUSTER:
        return aioredis.RedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in target.nodes],
            **_auth(target), **_tls(target), **options,
        )
    sentinel = AsyncSentinel(list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options), **options)
    return sentinel.master_for(target.service, db=target.db, max_connections=pool_size, **_auth(target),
                               **_tls(target))


def connect_sync(url: str | RedisTarget, **options: Any) -> SyncRedis:
    """The blocking twin of ``connect`` (for actor constructors and CLIs, never in ``async def``)."""
    target = url if isinstance(url, RedisTarget) else parse(url)
    if target.topology is Topology.SINGLE:
        return redis.Redis.from_url(target.url, **options)
    if target.topology is Topology.CLUSTER:
        return redis.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            **_auth(target), **_tls(target), **options,
        )
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options), **options)
    return sentinel.master_for(target.service, db=target.db, **_auth(target), **_tls(target))  # type: ignore[no-any-return]


def _auth(target: RedisTarget) -> dict[str, Any]:
    return {k: v for k, v in (("username", target.username), ("password", target.password)) if v is not None}


def _tls(target: RedisTarget) -> dict[str, Any]:
    return {"ssl": True} if target.tls else {}


def _sentinel_kwargs(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password
    return kwargs

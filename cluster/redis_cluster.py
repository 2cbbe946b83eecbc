"""A real Redis Cluster or a Sentinel group on this machine, from the embedded redis-server.

For tests, scripts and trying the cluster modes out (docs/cluster.md); production runs its
own. Both are built from ``EmbeddedRedis`` processes (AOF on, the ``appendfsync`` asked
for), so every node can be SIGKILLed and started again on its port and data directory.

``EmbeddedRedisCluster(root, primaries=3, replicas=1)`` starts the nodes with
``--cluster-enabled yes``, gives primary ``i`` the ``i``-th third of the 16,384 slots,
introduces the nodes (``CLUSTER MEET``), makes each replica follow its primary
(``CLUSTER REPLICATE``) and waits for ``cluster_state:ok``; its ``url`` is a
``redis+cluster://`` URL. ``EmbeddedSentinels(root, sentinels=3)`` starts a master, a replica
and sentinels that watch it (quorum: a majority); its ``url`` is a ``redis+sentinel://`` URL.

Cluster formation uses redis-py only (no ``redis-cli``), so it works with any redis-server.
"""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from cluster.redis_server import EmbeddedRedis, RedisStartError, free_port, redis_server_binary

log = logging.getLogger(__name__)

SLOTS = 16384


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass  # a node still starting or failing over: ask again
        time.sleep(0.1)
    raise RedisStartError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def free_cluster_port(rng: random.Random | None = None) -> int:
    """A port that is free and whose cluster bus port (+10,000; Redis 6 has no
    ``cluster-port``) is free too, below the usual ephemeral range."""
    rng = rng or random.Random()
    for _ in range(200):
        port = rng.randrange(12000, 22000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RedisStartError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


class EmbeddedRedisCluster:
    """``primaries`` primaries with ``replicas`` replicas each (see the module docstring)."""

    def __init__(
        self, root: str | Path, *, primaries: int = 3, replicas: int = 1, appendfsync: str = "everysec",
        node_timeout_ms: int = 1000,
    ) -> None:
        if primaries < 3:
            raise ValueError("a Redis Cluster that can fail over needs at least 3 primaries")
        self.root = Path(root)
        self.primaries = primaries
        self.replicas = replicas
        cluster_args = [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
        ]
        ports: set[int] = set()
        while len(ports) < primaries * (1 + replicas):
            ports.add(free_cluster_port())
        self.nodes = [
            EmbeddedRedis(self.root / f"node{i}", port, appendfsync=appendfsync, extra_args=cluster_args)
            for i, port in enumerate(sorted(ports))
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout_s: float = 60.0) -> EmbeddedRedisCluster:
        for node in self.nodes:
            node.start()
        try:
            self._form(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("redis cluster up: %s", self.url)
        return self

    def _form(self, timeout_s: float) -> None:
        ids = [_client(n.port).execute_command("CLUSTER", "MYID").decode() for n in self.nodes]
        for i in range(self.primaries):
            first, last = i * SLOTS // self.primaries, (i + 1) * SLOTS // self.primaries
            _client(self.nodes[i].port).execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
        for node in self.nodes[1:]:
            _client(node.port).execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        _wait(lambda: all(self._knows_all(n.port, ids) for n in self.nodes), timeout_s, "the nodes to meet")
        for k, node in enumerate(self.nodes[self.primaries:]):
            _client(node.port).execute_command("CLUSTER", "REPLICATE", ids[k % self.primaries])
        _wait(self.healthy, timeout_s, "cluster_state:ok with every replica in sync")

    @staticmethod
    def _knows_all(port: int, ids: list[str]) -> bool:
        listing = _client(port).execute_command("CLUSTER", "NODES")
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        return all(node_id in text for node_id in ids)

    def healthy(self) -> bool:
        """Every running node says ``cluster_state:ok``, and every replica's link to its
        primary is up."""
        for node in self.running():
            client = _client(node.port)
            if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                return False
            info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def running(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if n.pid is not None and n.exit_code() is None]

    def primary_of(self, key: str) -> EmbeddedRedis:
        """The node that serves ``key``'s slot now."""
        for node in self.running():
            client = _client(node.port)
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            if client.info("replication").get("role") == "master":
                for entry in client.execute_command("CLUSTER", "SLOTS"):
                    if entry[0] <= slot <= entry[1] and int(entry[2][1]) == node.port:
                        return node
        raise RedisStartError(f"no running primary serves {key!r}")

    def fail_over(self, node: EmbeddedRedis, timeout_s: float = 30.0) -> None:
        """SIGKILL a primary, wait until a replica took its slots over, start it again (it
        comes back as a replica) and wait until the cluster is whole."""
        node.kill()
        _wait(lambda: self._taken_over(node.port), timeout_s, "a replica to take over")
        node.start()
        _wait(self.healthy, timeout_s, "the old primary to rejoin as a replica")

    def _taken_over(self, dead_port: int) -> bool:
        """Every running node serves all slots again, none of them from ``dead_port``."""
        for node in self.running():
            client = _client(node.port)
            if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                return False
            if any(int(entry[2][1]) == dead_port for entry in client.execute_command("CLUSTER", "SLOTS")):
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _SentinelProcess:
    """One ``redis-server --sentinel`` watching ``service`` on ``master_port``."""

    def __init__(self, root: Path, *, service: str, master_port: int, quorum: int, down_after_ms: int) -> None:
        self.root = root
        self.port = free_port()
        self.config = root / "sentinel.conf"
        self.lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {root.resolve()}",
            f"logfile {(root / 'sentinel.log').resolve()}",
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {max(3000, 3 * down_after_ms)}",
            f"sentinel parallel-syncs {service} 1",
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(self.lines) + "\n")  # sentinels rewrite it as they learn
        self._proc = subprocess.Popen([redis_server_binary(), str(self.config), "--sentinel"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: bool(_client(self.port).ping()), 10.0, f"sentinel on port {self.port}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class EmbeddedSentinels:
    """A master, one replica and ``sentinels`` sentinels (see the module docstring)."""

    def __init__(
        self, root: str | Path, *, sentinels: int = 3, service: str = "pulseline", appendfsync: str = "everysec",
        down_after_ms: int = 1000,
    ) -> None:
        self.root = Path(root)
        self.service = service
        self.master = EmbeddedRedis(self.root / "master", appendfsync=appendfsync)
        self.replica = EmbeddedRedis(self.root / "replica", appendfsync=appendfsync,
                                     extra_args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinels = [
            _SentinelProcess(self.root / f"sentinel{i}", service=service, master_port=self.master.port,
                             quorum=sentinels // 2 + 1, down_after_ms=down_after_ms)
            for i in range(sentinels)
        ]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{self.service}"

    @property
    def servers(self) -> list[EmbeddedRedis]:
        return [self.master, self.replica]

    def start(self, timeout_s: float = 60.0) -> EmbeddedSentinels:
        try:
            self.master.start()
            self.replica.start()
            _wait(lambda: self.replica_in_sync(self.replica.port), timeout_s, "the replica to sync")
            for sentinel in self.sentinels:
                sentinel.start()
            _wait(self._sentinels_agree, timeout_s, "the sentinels to find each other and the replica")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def replica_in_sync(port: int) -> bool:
        info = _client(port).info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            state = _client(sentinel.port).sentinel_master(self.service)  # parsed by redis-py
            if not isinstance(state, dict) or int(state["num-other-sentinels"]) < len(self.sentinels) - 1 or int(state["num-slaves"]) < 1:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the first sentinel sees it now."""
        address = _client(self.sentinels[0].port).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(address[1])

    def fail_over(self, timeout_s: float = 60.0) -> None:
        """SIGKILL the master, wait for the sentinels to promote the replica, start the old
        master again and wait until it replicates from the new one."""
        old = next(s for s in self.servers if s.port == self.master_port())
        new = next(s for s in self.servers if s is not old)
        old.kill()
        _wait(lambda: self.master_port() == new.port and _client(new.port).info("replication")["role"] == "master",
              timeout_s, "the sentinels to promote the replica")
        old.start()
        # the sentinels make it a replica when they next look at it (INFO every 10 s, later on a
        # busy box: a CI run once waited out 60 s); say it now, as they would, and wait for the sync
        _wait(lambda: _client(old.port).replicaof("127.0.0.1", new.port) is not None, timeout_s,
              "the old master to take its new role")
        _wait(lambda: self.replica_in_sync(old.port), timeout_s, "the old master to follow the new one")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.master.stop()

    def __enter__(self) -> EmbeddedSentinels:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Typed settings for the ``pulseline`` entrypoints (one object per process, passed in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.redis_url import parse


DEFAULT_RESULTS_SINK = "leaderboards.results:publish_from_session"
DEFAULT_HISTORY_SINK = "history.sink:record_rides"


class Settings(BaseSettings):
    """Read from ``PULSELINE_*`` environment variables (and ``REDIS_URL``/``RAY_ADDRESS``)
    only when an entrypoint builds one; never at import time."""

    model_config = SettingsConfigDict(env_prefix="PULSELINE_", extra="ignore")

    # REDIS_URL: attach instead of starting embedded Redis; redis://, redis+cluster:// or
    # redis+sentinel:// (storage.redis_url, docs/cluster.md)
    redis_url: str | None = None
    ray_address: str | None = None  # RAY_ADDRESS: attach instead of starting local Ray
    # the stack's directory: Redis AOF, the development secret, the lock, supervisor state
    data_dir: Path = Path(".pulseline")
    host: str = "127.0.0.1"  # the address the edge listens on
    event_loop: str = "uvloop"  # the edge's loop: "uvloop" (when installed) or "asyncio"
    port: int = 8000  # the edge's port (extra edges of `up --edges N` take the next ones)
    prefix: str = "pl"  # every Redis key starts with it (several stacks can share one Redis)
    namespace: str = "pulseline"  # the Ray namespace of the session and leaderboard actors
    local_session_slots: int = 256  # session actors a local Ray may hold (its `session_slot` resource)
    # The fastest a class ticks (one tick per class per interval carries its samples to its
    # actor and its board back): what a 10 Hz viewer needs (see docs/benchmarks.md).
    tick_interval_s: float = 0.1
    # The slowest a class ticks (a class whose viewers all ask 1 board/s ticks every second;
    # each class ticks once per period of its fastest viewer, api/pump.py), also the pace of
    # a class with devices and no viewer (its acks).
    max_tick_interval_s: float = Field(default=1.0, gt=0, le=5.0)
    # How ticks reach session actors: "stream" (a direct connection per actor process, Ray
    # only for control) or "ray" (one actor call per session per tick, as before the stream).
    session_transport: Literal["stream", "ray"] = "stream"
    session_stream_timeout_s: float = 5.0  # a tick without a result by then: reconnect, resync
    ack_interval_s: float = 1.0  # at most one ack frame per device per interval
    # Boards every ended class publishes its results to (PULSELINE_SESSION_LEADERBOARDS='["weekly-kj"]').
    session_leaderboards: list[str] = []
    # Where an ended class's results go ("package.module:function", async (settings, snapshot));
    # used only with session_leaderboards. PULSELINE_RESULTS_SINK overrides the default.
    results_sink: str = Field(default=DEFAULT_RESULTS_SINK, pattern=r"^([A-Za-z_][\w.]*:[A-Za-z_][\w.]*)?$")
    # Where an ended class's riders' rides are recorded (ride history, records; docs/history.md;
    # empty: no ride history). Same form as results_sink.
    history_sink: str = Field(default=DEFAULT_HISTORY_SINK, pattern=r"^([A-Za-z_][\w.]*:[A-Za-z_][\w.]*)?$")
    # The results stream (rides, class results, records for a warehouse; docs/results-stream.md):
    # entries older than this are trimmed (0: no age limit), and at most maxlen are kept.
    results_stream_retention_s: float = Field(default=7 * 86400.0, ge=0)
    results_stream_maxlen: int = Field(default=1_000_000, ge=0)
    # Webhooks (docs/webhooks.md): each edge delivers platform events to subscriptions.
    webhooks: bool = True  # run the dispatcher on this edge (off: subscriptions wait for an edge that runs one)
    webhook_timeout_s: float = Field(default=10.0, gt=0)  # a delivery without an answer by then failed
    webhook_backoff_s: float = Field(default=2.0, gt=0)  # first retry after this, doubling each time ...
    webhook_max_backoff_s: float = Field(default=3600.0, gt=0)  # ... up to this
    webhook_retry_window_s: float = Field(default=3 * 86400.0, ge=0)  # retried while the first try is younger
    webhook_max_in_flight: int = Field(default=100, ge=1)  # concurrent deliveries per edge
    checkpoint_interval_s: float = 0.25  # a changed class is checkpointed at most this often (acks wait for it)
    # A class's own actor (dedicated placement) that nobody has ticked or called for this long,
    # with nothing unsaved, no class plan still to follow and nothing being published, checkpoints
    # and exits (like an Orleans grain's collection age); the next sample, connection or call
    # brings it back from its checkpoint. 0: never.
    idle_deactivate_s: float = Field(default=900.0, ge=0)
    # Dense mode (actors/session_host.py): classes created with ``expected_riders`` at most
    # this many share host processes (0: only classes created with placement "dense");
    # ``dense_hosts`` host processes take them, by a hash of the class id.
    dense_max_riders: int = Field(default=0, ge=0)
    dense_hosts: int = Field(default=2, ge=1, le=4096)  # host processes that dense classes are spread over
    # Big classes (cluster/class_shards.py, docs/big-classes.md): a dedicated class created
    # with more ``expected_riders`` than this is owned by ceil(expected / this) class-shard
    # actors (at most ``max_class_shards``); 0: never shard.
    class_shard_riders: int = Field(default=1000, ge=0)
    max_class_shards: int = Field(default=64, ge=1, le=1024)  # the most class shards one class gets
    # Growing a class over class shards while it runs (docs/big-classes.md): "off", a class's
    # shards are fixed when it is created (riders by a hash of their id); "sharded", a class
    # created over class shards records each rider's shard and adds shards as riders join past
    # class_shard_riders per shard; "all", every dedicated class starts as one class shard and grows.
    # "sharded" by default: a class booked too small grows instead of overfilling its shards
    # (measured: no cost on the 3,000-rider class, docs/benchmarks.md).
    class_shard_growth: Literal["off", "sharded", "all"] = "sharded"
    # view=all rows per frame on a sharded class's board (it pages; a single actor's class sends all)
    board_page_rows: int = Field(default=500, ge=10, le=5000)
    # Where a class created without an expected size (or placement) runs.
    default_placement: Literal["dedicated", "dense"] = "dedicated"
    board_size: int = 10  # the top-N rows of a class board (a class may set its own)
    max_gap_s: float = 5.0  # a longer gap between two samples of a device adds no energy
    presence_grace_s: float = Field(default=60.0, gt=0)  # a live rider silent this long has left (off the board)
    profile_refresh_s: float = Field(default=60.0, ge=0)  # a class re-reads its riders' profiles this often (0: never)
    lobby_lead_s: float = Field(default=300.0, ge=0)  # a scheduled class opens its lobby this long before its start
    admit_rate_per_s: float = Field(default=200.0, ge=0)  # riders admitted into one class per second (0: no limit); the rest queue
    admit_burst: int = Field(default=400, ge=1)  # riders admitted at once into a class after a quiet spell
    admit_stale_s: float = Field(default=15.0, gt=0)  # a queued rider that stopped asking this long loses its place
    # A seated rider whose last device on an edge went keeps its seat this long, then gives it
    # to the next in the queue (a hello before then keeps it): after a ``bye`` ...
    seat_bye_grace_s: float = Field(default=10.0, ge=0)
    seat_drop_grace_s: float = Field(default=60.0, ge=0)  # ... and after a socket that closed without one (a phone that drops)
    # An edge reads a class's capacity once and keeps it this long (a class without one then
    # costs its hellos no Redis call); the edge that takes a ``PUT .../capacity`` knows at once.
    admit_capacity_cache_s: float = Field(default=5.0, ge=0)
    max_board_rate_hz: float = 10.0  # the fastest board rate a viewer may ask
    max_pending_samples_per_session: int = 50_000  # samples waiting for a tick per class; beyond, devices are throttled
    max_unacked_per_device: int = 3_600  # samples in flight per device; beyond, it is throttled
    handshake_timeout_s: float = 10.0  # a device connection must say hello within this
    send_queue_frames: int = 256  # frames queued for a slow client before it is closed (4429)

    # -- authentication (api/auth.py, docs/security.md) ----------------------------------
    # development: HS256 tokens signed with a shared secret (``auth_secret`` or one generated
    # into ``data_dir/dev-secret``), minted by ``pulseline token`` and the dev token route.
    # production: RS256/ES256 tokens from an OpenID Connect issuer, checked against its JWKS;
    # the edge refuses to start without an issuer or with a shared secret.
    auth_mode: Literal["development", "production"] = "development"
    auth_secret: SecretStr | None = None  # development mode's HS256 secret (default: generated into the data dir)
    auth_issuer: str | None = None  # e.g. https://login.example.com/realms/gym
    auth_jwks_url: str | None = None  # default: discovered from the issuer's openid-configuration
    auth_audience: str = "pulseline"  # the `aud` every token must carry
    auth_leeway_s: float = 30.0  # clock skew tolerated on exp / nbf / iat
    auth_jwks_cache_s: float = 3600.0  # refetch keys at least this often
    auth_jwks_min_refetch_s: float = 10.0  # an unknown kid refetches at most this often
    auth_expiry_notice_s: float = 60.0  # warn a connection this long before its token expires
    dev_token_ttl_s: float = 12 * 3600.0  # lifetime of development tokens
    # view-only single-session tokens for the class page (POST .../view-links, the demo's link)
    view_token_ttl_s: float = 2 * 3600.0
    view_token_max_ttl_s: float = 12 * 3600.0  # the longest a view link may be asked to last
    public_metrics: bool = False  # /metrics without an operator token (scrapers on a private net)
    # A separate listener for Prometheus, without auth (bind it to a private address): 0 = none.
    # Extra edges of `up --edges N` take the next ports. docs/operations.md.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # the address of that listener
    # A local Ray's metrics export port, where its agent serves the session actors' metrics
    # (and Ray's own): 0 = a free port Ray picks (written to Ray's service-discovery file).
    ray_metrics_export_port: int = Field(default=0, ge=0, le=65535)

    # -- logs (launch/logs.py, docs/operations.md) -----------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"  # INFO shows the access log and lifecycle lines
    # json: one JSON object a line (production, log shippers); console: readable lines (development);
    # auto: console on a terminal, json otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True  # one line per HTTP request and WebSocket connection (uvicorn's access log)


    # -- limits (api/limits.py; every one documented in docs/security.md) ------------------
    max_frame_bytes: int = 64 * 1024  # a device frame larger than this gets `too_large`
    max_ws_message_bytes: int = 1 << 20  # transport limit: larger messages close with 1009
    max_samples_per_frame: int = 1000  # samples in one `samples` frame
    max_devices_per_hub: int = 1024  # devices bound on one connection (hellos carry <= 256 each)
    max_frames_per_s_per_connection: float = 200.0  # frame rate of one connection (over it: `throttle`)
    max_frames_per_s_per_device: float = 20.0  # frame rate of one device
    rate_burst_s: float = 2.0  # a bucket holds this many seconds of its rate
    max_throttle_strikes: int = 20  # frames sent while throttled before the close (4429)
    max_connections_per_token: int = 4  # open connections with one token (operators: unlimited)
    max_connections_per_address: int = 4096  # open connections from one client address
    idle_timeout_s: float = 300.0  # no frame at all from a device connection for this long
    ws_ping_interval_s: float = 20.0  # WebSocket keepalive pings
    ws_ping_timeout_s: float = 20.0  # a connection that does not answer a ping by then is closed
    # Device and board frames bypass the ASGI queue (api/directws.py); false = plain ASGI.
    direct_ws: bool = True

    # -- resilience (api/errors.py, api/httpguard.py, api/health.py, cluster/supervisor.py) --
    redis_timeout_s: float = 2.0  # per Redis command on a request path (connect and reply)
    ray_call_timeout_s: float = 10.0  # per session actor call on a request path
    # The first call to an actor that has not answered yet: its process may still be starting
    # (~0.5 s on a quiet box, many seconds when a burst of classes starts on busy cores).
    actor_start_timeout_s: float = 25.0
    http_deadline_s: float = 30.0  # a request without a response by then gets 503
    max_http_body_bytes: int = 1 << 20  # larger HTTP bodies get 413
    http_head_timeout_s: float = 5.0  # a connection must send a complete request head by then
    readiness_timeout_s: float = 1.0  # each dependency check of /readyz
    # The embedded redis-server's AOF fsync policy: "always" = an ack means the sample is on
    # disk; "everysec" = an ack survives a crash of redis-server, an OS crash or power cut
    # may lose the last ~1-2 s of acks (docs/cluster.md, "Durability").
    redis_appendfsync: Literal["always", "everysec"] = "everysec"
    restart_backoff_min_s: float = 0.5  # the supervisor's first restart delay (doubles, jittered)
    restart_backoff_max_s: float = 30.0  # the supervisor's longest restart delay
    # The supervisor's liveness probe of what it restarts (an extra edge's GET /livez, the
    # embedded redis-server's PING): one that answers none of liveness_failures probes in a
    # row (its loop hung, or stopped by SIGSTOP or a debugger) is killed and restarted, as a
    # Kubernetes liveness probe would. liveness_failures = 0: no probe (attaching a debugger).
    liveness_period_s: float = Field(default=5.0, gt=0)
    # per probe; generous, so that an edge that is only overloaded (its loop seconds late) is
    # not killed with all its riders: their clients' own stall check moves them first
    liveness_timeout_s: float = Field(default=5.0, gt=0)
    liveness_failures: int = Field(default=3, ge=0)
    # An ended class's Redis keys expire this long after it ended (0 = keep for ever);
    # cluster/session_records.py. Results published to leaderboards are not affected.
    ended_retention_s: float = 7 * 24 * 3600.0

    @field_validator("redis_url")
    @classmethod
    def _usable_redis_url(cls, url: str | None) -> str | None:
        if url:
            parse(url)  # RedisUrlError (a ValueError) says what is wrong
        return url

    def actor_settings(self) -> dict[str, Any]:
        assert self.redis_url, "redis_url is resolved before actors are created"
        return {
            "redis_url": self.redis_url,
            "prefix": self.prefix,
            "board_size": self.board_size,
            "checkpoint_interval_s": self.checkpoint_interval_s,
            "idle_deactivate_s": self.idle_deactivate_s,
            "max_gap_s": self.max_gap_s,
            "presence_grace_s": self.presence_grace_s,
            "profile_refresh_s": self.profile_refresh_s,
            "lobby_lead_s": self.lobby_lead_s,
            "leaderboards": list(self.session_leaderboards),
            **({"results_sink": self.results_sink} if self.session_leaderboards and self.results_sink else {}),
            "history_sink": self.history_sink,
            "results_stream_retention_s": self.results_stream_retention_s,
            "results_stream_maxlen": self.results_stream_maxlen,
        }


def from_environment(**overrides: Any) -> Settings:
    import os

    env: dict[str, Any] = {}
    if os.environ.get("REDIS_URL"):
        env["redis_url"] = os.environ["REDIS_URL"]
    if os.environ.get("RAY_ADDRESS"):
        env["ray_address"] = os.environ["RAY_ADDRESS"]
    env.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**env)

"""Typed settings for the ``pulseline`` entrypoints (one object per process, passed in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from ``PULSELINE_*`` environment variables (and ``REDIS_URL``/``RAY_ADDRESS``)
    only when an entrypoint builds one; never at import time."""

    model_config = SettingsConfigDict(env_prefix="PULSELINE_", extra="ignore")

    redis_url: str | None = None  # REDIS_URL: attach instead of starting embedded Redis
    ray_address: str | None = None  # RAY_ADDRESS: attach instead of starting local Ray
    data_dir: Path = Path(".pulseline")
    host: str = "127.0.0.1"
    port: int = 8000
    prefix: str = "pl"
    namespace: str = "pulseline"
    local_session_slots: int = 256
    # One actor call per session per tick. At the top board rate (10 Hz) a tick lands just
    # before every viewer is due, so a sample waits at most one tick (see docs/benchmarks.md).
    tick_interval_s: float = 0.1
    checkpoint_interval_s: float = 0.25
    board_size: int = 10
    max_gap_s: float = 5.0
    max_board_rate_hz: float = 10.0
    max_pending_samples_per_session: int = 50_000
    max_unacked_per_device: int = 3_600
    handshake_timeout_s: float = 10.0
    send_queue_frames: int = 256

    def actor_settings(self) -> dict[str, Any]:
        assert self.redis_url, "redis_url is resolved before actors are created"
        return {
            "redis_url": self.redis_url,
            "prefix": self.prefix,
            "board_size": self.board_size,
            "checkpoint_interval_s": self.checkpoint_interval_s,
            "max_gap_s": self.max_gap_s,
        }


def from_environment(**overrides: Any) -> Settings:
    import os

    env = {}
    if os.environ.get("REDIS_URL"):
        env["redis_url"] = os.environ["REDIS_URL"]
    if os.environ.get("RAY_ADDRESS"):
        env["ray_address"] = os.environ["RAY_ADDRESS"]
    env.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**env)

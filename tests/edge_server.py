"""uvicorn serving the edge in a thread of the test process (shared by fixtures and scenarios)."""

from __future__ import annotations

import threading
import time
from typing import Any


class EdgeServer:
    """``create_app(settings)`` under uvicorn in a daemon thread with its own event loop."""

    def __init__(self, settings: Any, cluster_settings: Any = None, log_options: dict[str, Any] | None = None) -> None:
        import uvicorn

        from api.app import create_app
        from api.limits import uvicorn_options

        self.settings = settings
        app = create_app(settings)
        if cluster_settings is not None:
            app.state.cluster_settings = cluster_settings
        logs = log_options if log_options is not None else {"log_level": "warning"}  # (launch.logs: the real options)
        self.config = uvicorn.Config(
            app, host="127.0.0.1", port=settings.port,
            loop="asyncio", lifespan="on", **uvicorn_options(settings), **logs,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}"

    def start(self, timeout_s: float = 60.0) -> EdgeServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("edge did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

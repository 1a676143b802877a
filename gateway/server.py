"""Running the app under uvicorn, with a drain on SIGTERM so load balancers can step away."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("registry_gateway")


class DrainingServer(uvicorn.Server):
    """On SIGTERM: /readyz answers 503 at once, requests are still served for `drain`
    seconds, then uvicorn's graceful shutdown finishes in-flight requests and exits."""

    def __init__(self, config: uvicorn.Config, drain: float, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain = drain
        self.on_drain = on_drain
        self._drain_started = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain <= 0 or self._drain_started:
            super().handle_exit(sig, frame)
            return
        self._drain_started = True
        self.on_drain()
        log.info(
            "SIGTERM: draining for %.1f s before shutting down",
            self.drain,
            extra={"event": "draining"},
        )
        timer = threading.Timer(self.drain, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def serve(config: uvicorn.Config, *, drain: float, on_drain: Callable[[], None]) -> None:
    """Serve one process until stopped; `on_drain` marks the app as draining on SIGTERM."""
    DrainingServer(config, drain, on_drain).run()


def serve_workers(config: uvicorn.Config) -> None:
    """Serve with several workers under uvicorn's supervisor, which stops them at once on
    SIGTERM: drain those with a pre-stop delay in the orchestrator instead."""
    Multiprocess(config, sockets=[config.bind_socket()]).run()

"""Draining a server on SIGTERM, the way Kubernetes, SLURM and systemd stop it.

The server keeps listening but takes no new work, so a load balancer sees it leave instead of meeting refused
connections: new requests get 503 (`Retry-After`, `Connection: close`), `/health` answers 503 with
`{"status": "draining"}`, and the requests in flight (streams included) finish for up to `drain_seconds`;
then the server exits 0 (what is still running after the grace period is cancelled). Ctrl-C (SIGINT) still
stops at once. `DrainMiddleware` (pure ASGI: streamed responses pass through untouched) counts the requests in
flight; `serve_api` runs uvicorn with it (llama2ft-serve); `wait_for_drain` holds the main thread of the web
app, whose server Gradio runs in a thread of its own (llama2ft-web).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from llama2ft.serving.api_models import error_response


class Drain:
    """One server's drain: the requests in flight, and since when (if at all) it drains. `quiet_s`: how long
    nothing must be in flight before the drain counts as done (the web chat's client joins Gradio's queue and
    opens the event's stream in two requests)."""

    def __init__(self, seconds: float, quiet_s: float = 0.0):
        self.seconds, self.quiet_s = float(seconds), quiet_s
        self.in_flight = 0
        self.left = 0
        self.since: Optional[float] = None
        self._idle_since = time.monotonic()
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self, *_: Any) -> None:
        """Start draining (a signal handler: it only flags; `wait_for_drain`/`serve_api` report it)."""
        if self.since is None:
            self.since = time.monotonic()

    def done(self) -> bool:
        """Draining, and nothing has been in flight for `quiet_s`, or the grace period is over."""
        if self.since is None:
            return False
        now = time.monotonic()
        if (self.in_flight == 0 and now - self._idle_since >= self.quiet_s) or now - self.since >= self.seconds:
            self.left = self.in_flight  # cut when the server stops
            return True
        return False

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle_since = time.monotonic()

    @contextmanager
    def counted(self) -> Iterator[None]:
        """Work in flight that is no HTTP request of its own (a web chat answer inside Gradio's queue)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def report(self, name: str) -> None:
        if self.since is None:
            return
        left = f"; {self.left} still running, cancelled" if self.left else ""
        print(f"{name}: drained in {time.monotonic() - self.since:.1f} s (SIGTERM; up to {self.seconds:g} s){left}",
              flush=True)

    def middleware(self, health: bool = False) -> Any:
        """For `FastAPI(middleware=[...])` (Gradio's `launch(app_kwargs=...)`)."""
        from starlette.middleware import Middleware

        return Middleware(DrainMiddleware, drain=self, health=health)


# Gradio's stream of the results of events already in its queue: a client opens it just after joining (possibly
# after SIGTERM came); new work can only enter by joining, which gets 503
QUEUE_DATA = "/queue/data"


class DrainMiddleware:
    """Pure ASGI: counts HTTP requests in flight; while draining answers 503 to new ones. `health`: also
    answer GET /health itself (an app without one, the web chat)."""

    def __init__(self, app: Any, drain: Drain, health: bool = False):
        self.app, self.drain, self.health = app, drain, health

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan, websockets
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        health = path == "/health"
        if self.drain.draining and not path.endswith(QUEUE_DATA):
            from fastapi.responses import JSONResponse

            if health:
                response = JSONResponse({"status": "draining", "in_flight": self.drain.in_flight}, status_code=503)
            else:
                response = error_response(503, "the server is shutting down: send the request to another replica",
                                          "server_draining")
                response.headers["Retry-After"] = "5"
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        if health and self.health:
            from fastapi.responses import JSONResponse

            return await JSONResponse({"status": "ok"})(scope, receive, send)
        if "/heartbeat/" in path:  # Gradio's stream that lasts as long as a browser tab: no work in flight
            return await self.app(scope, receive, send)
        with self.drain.counted():
            await self.app(scope, receive, send)


def serve_api(app: Any, host: str, port: int, seconds: float, name: str = "llama2ft-serve") -> None:
    """uvicorn serving `app` until SIGTERM has drained it (or Ctrl-C)."""
    import uvicorn

    drain = Drain(seconds)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGTERM:  # not uvicorn's: it stops listening at once and re-raises SIGTERM at exit
                return drain.begin()
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            return drain.done() or await super().on_tick(counter)

    # after the drain, what is left (only past the grace period) is cancelled within a second
    config = uvicorn.Config(DrainMiddleware(app, drain), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=1)
    DrainingServer(config).run()
    drain.report(name)


def wait_for_drain(drain: Drain, close: Callable[[], None], name: str) -> None:
    """Hold the main thread while a server runs in another: SIGTERM drains it, then `close()`; Ctrl-C closes
    at once."""
    previous = signal.signal(signal.SIGTERM, drain.begin)
    try:
        while not drain.done():
            time.sleep(0.1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted, closing", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        close()
    drain.report(name)

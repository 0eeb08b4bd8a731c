"""Serve an ASGI app with uvicorn: in a background thread (tests, demo) or in the foreground (CLI).

Generic on purpose: every provider simulator is a Starlette app (or a list of
routes mounted into one), and this module knows none of them.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

__all__ = ["RunningServer", "serve_forever", "serve_in_thread"]


class RunningServer:
    """A uvicorn server running in a daemon thread; stop it with :meth:`stop` or ``with``."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port
        netloc = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{netloc}:{port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to shut down gracefully and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Graceful shutdown is stuck on a long request: stop waiting for it.
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer({self.base_url!r})"


def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
    log_level: str = "warning",
    **uvicorn_options: Any,
) -> RunningServer:
    """Start ``app`` on ``host:port`` (0 = any free port) and return once it answers HTTP."""
    # Bind here rather than in uvicorn, so that port 0 resolves to a known port
    # before the server starts and no other process can take it meanwhile.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "log_config": None,  # leave the host application's logging alone
        "log_level": log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        **uvicorn_options,
    }
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound_port, **options))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{bound_port}", daemon=True
    )
    thread.start()
    running = RunningServer(server, thread, host, bound_port)
    deadline = time.monotonic() + startup_timeout
    while True:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"server on {running.base_url} exited during startup")
        if server.started:
            try:
                # Any HTTP answer (404 included) proves the whole stack serves.
                # trust_env=False: a loopback probe must never go through an HTTP proxy.
                httpx.get(running.base_url + "/", timeout=1.0, trust_env=False)
                return running
            except httpx.TransportError:
                pass
        if time.monotonic() > deadline:
            running.stop()
            raise TimeoutError(f"server on {running.base_url} did not answer within {startup_timeout}s")
        time.sleep(0.01)


def serve_forever(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
    """Serve ``app`` in the foreground until interrupted (for a CLI command)."""
    uvicorn.run(app, host=host, port=port, **uvicorn_options)

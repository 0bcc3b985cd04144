"""One loopback HTTP server life cycle for every stand-in (Hub, Argo Server, Kubernetes API,
fault proxy): a ``ThreadingHTTPServer`` on 127.0.0.1 with a free port, served from a daemon
thread, so no stand-in can listen beyond loopback and each one starts and stops the same way."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar

StateT = TypeVar("StateT")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    quiet = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Stand-ins that cut connections on purpose would print a traceback per reset.
        if not self.quiet:
            super().handle_error(request, client_address)


class LoopbackHTTPServer:
    """``port``/``host``/``url`` are known once constructed; ``start`` serves, ``stop`` closes."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, quiet: bool = False) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.quiet = quiet
        self.port: int = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class StandIn(Generic[StateT]):
    """A scripted stand-in: its handler class reads ``state``; ``url`` is where it listens."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], state: StateT) -> None:
        self.state = state
        self._server = LoopbackHTTPServer(type("Handler", (handler,), {"state": state}))
        self.url = self._server.url

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

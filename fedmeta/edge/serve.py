"""A tiny local HTTP interface to an ``EdgeFrontend`` (JSON in, JSON out).

- ``GET /status``: the served version and round, stored examples, swaps, last error;
- ``POST /examples`` ``{"x": [...], "y": [...]}``: store labelled examples, re-adapt;
- ``POST /predict`` ``{"x": [...]}``: ``{"version": v, "outputs": [...]}``.

Bad input is status 400 with ``{"error": "..."}``; 503 while no meta-model is published.
A background thread ``refresh``-es the front-end every ``poll`` seconds.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import FedmetaError
from .frontend import EdgeFrontend

MAX_BODY = 64 << 20  # bytes of one request


def handler(frontend: EdgeFrontend) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``frontend``."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # http.server's names
            if self.path != "/status":
                return self._reply(404, {"error": f"no {self.path}: GET /status"})
            self._reply(200, frontend.status())

        def do_POST(self) -> None:
            if self.path not in ("/examples", "/predict"):
                return self._reply(404, {"error": f"no {self.path}: POST /examples, /predict"})
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._reply(400, {"error": f"a JSON body of 1 to {MAX_BODY} bytes"})
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict) or "x" not in body:
                    return self._reply(400, {"error": 'expected a JSON object with "x"'})
                if frontend.version is None:
                    return self._reply(503, {"error": f"no meta-model yet: none published "
                                                      f"in {frontend.models}"})
                if self.path == "/examples":
                    if "y" not in body:
                        return self._reply(400, {"error": 'expected "y", the labels'})
                    stored = frontend.add_examples(body["x"], body["y"])
                    return self._reply(200, {"examples": stored, "version": frontend.version})
                version, outputs = frontend.predict(body["x"])
                self._reply(200, {"version": version, "outputs": outputs.tolist()})
            except (FedmetaError, ValueError) as exc:
                self._reply(400, {"error": str(exc)})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per request

    return Handler


def serve(frontend: EdgeFrontend, host: str, port: int, poll: float,
          ready: Any = None) -> None:
    """Serve ``frontend`` on ``host:port`` (0: a free port) until interrupted; ``ready``
    (a callable) gets the bound port once the server listens."""
    stop = threading.Event()
    watcher = threading.Thread(target=frontend.watch, args=(poll, stop), daemon=True)
    watcher.start()
    with ThreadingHTTPServer((host, port), handler(frontend)) as server:
        if ready is not None:
            ready(server.server_address[1])
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            stop.set()
            watcher.join(timeout=10)
            frontend.close()

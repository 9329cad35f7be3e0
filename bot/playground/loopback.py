"""A JSON-over-HTTP server on a free loopback port, for the stand-ins of services the bot calls (Slack's Web
API, CodeBuild): POSTs go to ``handle(path, headers, body) -> (status, payload, extra headers)``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Handle = Callable[[str, Mapping[str, str], bytes], tuple[int, object, Mapping[str, str]]]


def json_server(handle: Handle, content_type: str = "application/json") -> tuple[ThreadingHTTPServer, str]:
    """Serving from a daemon thread; returns the server (``shutdown()`` it) and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload, headers = handle(self.path, self.headers, body)
            data = json.dumps(payload, default=str).encode()
            self.send_response(status)
            for k, v in {"Content-Type": content_type, **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll: shutdown() returns at once instead of after half a second
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"

"""An HTTP proxy in front of moto that can answer with server errors, to test S3 outages."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.failures_left = 0
        self.status = 503
        self.requests = 0
        self.failed = 0
        self.delay = 0.0  # seconds to hold each request before answering, to make callers overlap
        self.only: tuple[str, str] | None = None  # (method, path part): fail only matching requests
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    matches = proxy.only is None or (
                        self.command == proxy.only[0] and proxy.only[1] in self.path)
                    fail = proxy.failures_left != 0 and matches
                    if fail and proxy.failures_left > 0:
                        proxy.failures_left -= 1
                    if fail:
                        proxy.failed += 1
                time.sleep(proxy.delay)
                if fail:
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # a short poll: stop() returns at once instead of after half a second
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def fail(self, count: int, status: int = 503, only: tuple[str, str] | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (-1: every request from now on);
        with ``only`` = (method, path part), only the requests that match."""
        with self._lock:
            self.failures_left = count
            self.status = status
            self.only = only

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""The demo's channel page: a browser view of the Slack stand-in that looks and behaves like a channel.

What people type and click becomes the requests Slack would send the bot (signed slash commands and
block_actions payloads, through ``SlackUser``); what the bot posts, edits and replies comes back
from the stand-in's state, which the page long-polls.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bot.playground.slack import SlackStandIn, SlackUser

ASSETS = Path(__file__).parent / "web"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" '
           b'fill="#1264a3"/><path d="M5 8a3 3 0 1 1 1 2.2" stroke="#fff" stroke-width="1.6" fill="none"/>'
           b'<path d="M3.6 9.4 5 8l1.4 1.4" stroke="#fff" stroke-width="1.4" fill="none"/></svg>')


class ChannelPage:
    def __init__(self, standin: SlackStandIn, users: dict[str, SlackUser], channel: tuple[str, str],
                 running: Callable[[], dict], port: int = 0, trip: Callable[[], str] | None = None):
        self.standin = standin
        self.users = users  # user id -> the person typing as them
        self.names = {uid: u.name for uid, u in users.items()}
        self.channel_id, self.channel_name = channel
        self.running = running  # what Lambda runs now, for the side panel
        self.trip = trip  # puts the sample's alarm into ALARM (the side panel's button)
        page = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path, _, query = self.path.partition("?")
                if path == "/api/state":
                    after = int(dict(p.partition("=")[::2] for p in query.split("&") if p).get("after") or -1)
                    self._json(200, page.state(after))
                elif path.startswith("/files/"):  # a file shared in the channel (a job's full log)
                    content = page.standin.file_content(urllib.parse.unquote(path[len("/files/"):]))
                    if content is None:
                        self._json(404, {"error": "no such file"})
                    else:
                        self._send(200, "text/plain; charset=utf-8", content)
                elif path == "/favicon.ico":
                    self._send(200, "image/svg+xml", FAVICON)
                elif path in ("/", "/index.html"):
                    self._file(ASSETS / "index.html")
                elif path.startswith("/static/") and "/" not in path[len("/static/"):]:
                    self._file(ASSETS / path[len("/static/"):])
                else:
                    self._json(404, {"error": "not found"})

            def _from_this_page(self) -> bool:
                """Only the page itself may type and click as Ana or Bo: another site's form or script
                (a cross-origin POST, or a rebinding of its name to 127.0.0.1) is refused. JSON alone is
                accepted, which a cross-origin page cannot send without a preflight that gets no CORS answer."""
                port = self.server.server_address[1]
                ours = {f"127.0.0.1:{port}", f"localhost:{port}"}
                origin = self.headers.get("Origin")
                return (self.headers.get("Host", "") in ours
                        and (origin is None or origin in {f"http://{h}" for h in ours})
                        and self.headers.get("Content-Type", "").split(";")[0].strip() == "application/json")

            def do_POST(self):
                if not self._from_this_page():
                    self.close_connection = True
                    return self._json(403, {"error": "only the demo page itself may act in the demo"})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                    status, answer = page.act(self.path, body)
                except (ValueError, KeyError, LookupError) as exc:
                    status, answer = 400, {"error": str(exc)}
                self._json(status, answer)

            def _file(self, path: Path):
                if path.suffix not in TYPES or not path.is_file():
                    return self._json(404, {"error": "not found"})
                self._send(200, TYPES[path.suffix], path.read_bytes())

            def _json(self, status: int, payload: dict):
                self._send(status, "application/json", json.dumps(payload).encode())

            def _send(self, status: int, ctype: str, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")  # a log is shown as text, whatever it holds
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the tab closed while it waited: nothing to tell anyone

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> ChannelPage:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what the page shows ---------------------------------------------------------------------

    def state(self, after: int, wait: float = 20.0) -> dict:
        """The channel as everyone sees it, once something changed since revision ``after``."""
        revision = self.standin.wait_change(after, wait) if after >= 0 else self.standin.revision
        messages, replies, files = self.standin.snapshot(self.channel_id)
        return {"revision": revision, "channel": {"id": self.channel_id, "name": self.channel_name},
                "users": self.names, "messages": messages, "ephemeral": replies, "files": files,
                "lambda": self.running(), "now": time.time()}

    def act(self, path: str, body: dict) -> tuple[int, dict]:
        if path == "/api/alarm":
            if self.trip is None:
                return 404, {"error": "this page has no alarm to trip"}
            return 200, {"said": self.trip()}
        user = self.users[body["user"]]
        if path == "/api/command":
            text = body["text"].strip()
            if not text.startswith("/rollback"):
                return 400, {"error": "Only the /rollback command works in this channel."}
            return 200, {"status": user.command(text[len("/rollback"):].strip())}
        if path == "/api/click":
            if "reply" in body:  # a button on an ephemeral reply
                reply = self.standin.responses[int(body["reply"])]
                message = {"ts": f"{time.time():.6f}", "text": reply.get("text", ""), "blocks": reply.get("blocks", [])}
            else:
                message = self.standin.message(self.channel_id, body["ts"])
            return 200, {"status": user.click(message, body["action_id"], body.get("value"))}
        return 404, {"error": "not found"}

"""A stateful stand-in for Slack: the Web API methods the bot uses, on a free loopback port, and
users who send the real app signed requests with the payloads Slack sends."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slack_sdk.signature import SignatureVerifier


class SlackStandIn:
    def __init__(self) -> None:
        self.messages: dict[str, list[dict]] = defaultdict(list)  # channel -> messages, oldest first
        self.responses: list[dict] = []  # what was sent to response_urls (ephemeral replies)
        self.files: list[dict] = []
        self.calls: list[tuple[float, str]] = []  # (monotonic time, method)
        self.groups: dict[str, list[str]] = {}
        self.home: dict[str, dict] = {}  # user -> the App Home view published for them
        self._fail: dict[str, list[int]] = defaultdict(list)  # method -> Retry-After seconds to answer 429 with
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload, headers = standin._handle(self.path, self.headers.get("Content-Type", ""), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.api_url = self.base + "/api/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- test controls ---------------------------------------------------------------------------

    def rate_limit(self, method: str, times: int, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and Retry-After."""
        with self._lock:
            self._fail[method] += [retry_after] * times

    def response_url(self) -> str:
        return f"{self.base}/response/{next(self._seq)}"

    def message(self, channel: str, ts: str) -> dict:
        return next(m for m in self.messages[channel] if m["ts"] == ts)

    def thread(self, channel: str, ts: str) -> list[dict]:
        return [m for m in self.messages[channel] if m.get("thread_ts") == ts]

    def count(self, method: str) -> int:
        return sum(1 for _, m in self.calls if m == method)

    # -- the Web API -----------------------------------------------------------------------------

    def _handle(self, path: str, content_type: str, body: bytes):
        if content_type.startswith("application/json"):
            args = json.loads(body or b"{}")
        else:
            args = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        for key in ("blocks", "attachments"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        if path.startswith("/response/"):
            with self._lock:
                self.responses.append(args)
            return 200, {"ok": True}, {}
        if path.startswith("/upload/"):
            return 200, {"ok": True}, {}
        method = path.removeprefix("/api/")
        with self._lock:
            self.calls.append((time.monotonic(), method))
            if self._fail[method]:
                retry_after = self._fail[method].pop(0)
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        with self._lock:
            return 200, handler(args), {}

    def _api_auth_test(self, args):
        return {"ok": True, "user_id": "UBOT", "bot_id": "BBOT", "team_id": "T1", "user": "rollback-bot",
                "team": "Test", "url": "https://test.slack.com/"}

    def _api_chat_postMessage(self, args):
        channel = args["channel"]
        ts = f"{int(time.time())}.{next(self._seq):06d}"
        msg = {"ts": ts, "text": args.get("text", ""), "blocks": args.get("blocks", []), "user": "UBOT",
               "thread_ts": args.get("thread_ts"), "updates": 0}
        self.messages[channel].append(msg)
        return {"ok": True, "channel": channel, "ts": ts, "message": msg}

    def _api_chat_update(self, args):
        channel, ts = args["channel"], args["ts"]
        for msg in self.messages[channel]:
            if msg["ts"] == ts:
                msg.update(text=args.get("text", msg["text"]), blocks=args.get("blocks", msg["blocks"]))
                msg["updates"] += 1
                return {"ok": True, "channel": channel, "ts": ts}
        return {"ok": False, "error": "message_not_found"}

    def _api_chat_postEphemeral(self, args):
        self.responses.append({**args, "response_type": "ephemeral"})
        return {"ok": True, "message_ts": f"{time.time():.6f}"}

    def _api_views_publish(self, args):
        view = args["view"] if isinstance(args["view"], dict) else json.loads(args["view"])
        self.home[args["user_id"]] = view
        return {"ok": True, "view": view}

    def _api_usergroups_users_list(self, args):
        return {"ok": True, "users": self.groups.get(args.get("usergroup"), [])}

    def _api_files_getUploadURLExternal(self, args):
        file_id = f"F{next(self._seq)}"
        self.files.append({"id": file_id, "filename": args.get("filename"), "length": int(args.get("length", 0))})
        return {"ok": True, "upload_url": f"{self.base}/upload/{file_id}", "file_id": file_id}

    def _api_files_completeUploadExternal(self, args):
        files = args.get("files")
        files = json.loads(files) if isinstance(files, str) else files
        for f in self.files:
            if f["id"] in {x["id"] for x in files}:
                f.update(channel=args.get("channel_id"), thread_ts=args.get("thread_ts"))
        return {"ok": True, "files": [{"id": x["id"]} for x in files]}


class SlackUser:
    """A person in a channel: types slash commands and clicks buttons, as signed HTTP requests."""

    def __init__(self, standin: SlackStandIn, bot_url: str, secret: str, user_id: str, channel: str = "C-OPS"):
        self.standin = standin
        self.bot_url = bot_url
        self.verifier = SignatureVerifier(secret)
        self.user_id = user_id
        self.channel = channel

    def _post(self, body: str, content_type: str = "application/x-www-form-urlencoded",
              timestamp: str | None = None, signature: str | None = None) -> int:
        ts = timestamp or str(int(time.time()))
        sig = signature or self.verifier.generate_signature(timestamp=ts, body=body)
        req = urllib.request.Request(self.bot_url, data=body.encode(), method="POST", headers={
            "Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def open_home(self) -> int:
        event = {"type": "event_callback", "team_id": "T1", "api_app_id": "A1", "event_id": f"Ev{time.time()}",
                 "event_time": int(time.time()), "event": {"type": "app_home_opened", "user": self.user_id,
                                                           "channel": "D1", "tab": "home"}}
        return self._post(json.dumps(event), content_type="application/json")

    def command(self, text: str, **signing) -> int:
        body = urllib.parse.urlencode({
            "token": "unused", "team_id": "T1", "team_domain": "test", "channel_id": self.channel,
            "channel_name": "ops", "user_id": self.user_id, "user_name": self.user_id.lower(),
            "command": "/rollback", "text": text, "api_app_id": "A1", "response_url": self.standin.response_url(),
            "trigger_id": f"trig-{time.time()}",
        })
        return self._post(body, **signing)

    def click(self, message: dict, action_id: str) -> int:
        action, block_id = None, None
        for block in message["blocks"]:
            for el in block.get("elements", []) + ([block["accessory"]] if "accessory" in block else []):
                if el.get("action_id") == action_id:
                    action, block_id = el, block.get("block_id", "b")
        assert action is not None, f"no {action_id} button on the message"
        payload = {
            "type": "block_actions", "team": {"id": "T1", "domain": "test"}, "api_app_id": "A1",
            "user": {"id": self.user_id, "name": self.user_id.lower(), "team_id": "T1"},
            "channel": {"id": self.channel, "name": "ops"}, "container": {
                "type": "message", "message_ts": message["ts"], "channel_id": self.channel},
            "message": {"type": "message", "ts": message["ts"], "text": message["text"], "blocks": message["blocks"]},
            "response_url": self.standin.response_url(), "trigger_id": f"trig-{time.time()}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": block_id, "value": action["value"],
                         "text": action["text"], "action_ts": f"{time.time():.6f}"}],
        }
        return self._post(urllib.parse.urlencode({"payload": json.dumps(payload)}))

"""A stateful stand-in for Slack: the Web API methods the bot uses, on a free loopback port, and
users who send the real app signed requests with the payloads Slack sends."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

from bot.playground.loopback import json_server

MAX_FILE = 5 * 1024 * 1024


class SlackStandIn:
    def __init__(self) -> None:
        self.messages: dict[str, list[dict]] = defaultdict(list)  # channel -> messages, oldest first
        self.responses: list[dict] = []  # what was sent to response_urls (ephemeral replies)
        self.response_meta: list[dict] = []  # for each of those: when it arrived, and whose reply it is
        self.files: list[dict] = []
        self.calls: list[tuple[float, str]] = []  # (monotonic time, method)
        self.groups: dict[str, list[str]] = {}
        self.people: dict[str, str] = {}  # user id -> display name (users.info)
        self.home: dict[str, dict] = {}  # user -> the App Home view published for them
        self.socket_url: str | None = None  # what apps.connections.open hands out (Socket Mode)
        self._fail: dict[str, list[int]] = defaultdict(list)  # method -> Retry-After seconds to answer 429 with
        self.errors: dict[str, str] = {}  # method -> the error it answers with (ok: false), until removed
        self.rate_limited: list[str] = []  # the methods answered 429, in order
        self._seq = itertools.count(1)
        self._owners: dict[str, str] = {}  # response_url id -> the user who will see the reply
        self._lock = threading.Lock()
        self.revision = 0  # counts changes anyone could see, so a page can wait for the next one
        self._changed = threading.Condition(self._lock)
        self._server, self.base = json_server(
            lambda path, headers, body: self._handle(path, headers.get("Content-Type", ""), body))
        self.api_url = self.base + "/api/"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- test controls ---------------------------------------------------------------------------

    def rate_limit(self, method: str, times: int, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and Retry-After."""
        with self._lock:
            self._fail[method] += [retry_after] * times

    def response_url(self, owner: str = "") -> str:
        """A response_url for one command or click; what is posted to it is shown to ``owner`` only."""
        rid = str(next(self._seq))
        with self._lock:
            self._owners[rid] = owner
        return f"{self.base}/response/{rid}"

    def wait_change(self, after: int, timeout: float) -> int:
        """Block until the revision passes ``after`` (or ``timeout``); the current revision."""
        with self._changed:
            self._changed.wait_for(lambda: self.revision > after, timeout)
            return self.revision

    def snapshot(self, channel: str) -> tuple[list[dict], list[dict], list[dict]]:
        """A consistent copy of a channel: its messages, the replies only their owner sees (with
        ``owner``, ``at`` and an ``id`` to click on), and the files shared in it."""
        with self._lock:
            messages = [dict(m) for m in self.messages[channel]]
            replies = [{**r, **meta, "id": i} for i, (r, meta) in enumerate(zip(self.responses, self.response_meta,
                                                                              strict=False))
                       if meta.get("owner") and r.get("response_type", "ephemeral") == "ephemeral"]
            files = [{k: v for k, v in f.items() if k != "content"} for f in self.files if f.get("channel") == channel]
        return messages, replies, files

    def file_content(self, file_id: str) -> bytes | None:
        with self._lock:
            return next((f.get("content", b"") for f in self.files if f["id"] == file_id), None)

    def _touch(self) -> None:  # with self._lock held
        self.revision += 1
        self._changed.notify_all()

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
                self.response_meta.append({"at": time.time(), "owner": self._owners.get(path.split("/")[-1], "")})
                self._touch()
            return 200, {"ok": True}, {}
        if path.startswith("/upload/"):  # the file's bytes, as Slack's upload URL receives them
            with self._lock:
                for f in self.files:
                    if f["id"] == path.removeprefix("/upload/"):
                        f["content"] = body[:MAX_FILE]
            return 200, {"ok": True}, {}
        method = path.removeprefix("/api/")
        with self._lock:
            self.calls.append((time.monotonic(), method))
            if self._fail[method]:
                retry_after = self._fail[method].pop(0)
                self.rate_limited.append(method)
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        handler = getattr(self, "_api_" + method.replace(".", "_"), None)
        if method in self.errors:
            return 200, {"ok": False, "error": self.errors[method]}, {}
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        with self._lock:
            result = handler(args)
            self._touch()
            return 200, result, {}

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

    def _api_chat_getPermalink(self, args):
        channel, ts = args["channel"], args["message_ts"]
        if not any(m["ts"] == ts for m in self.messages[channel]):
            return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel,
                "permalink": f"https://demo.slack.com/archives/{channel}/p{ts.replace('.', '')}"}

    def _api_users_info(self, args):
        name = self.people.get(args.get("user", ""))
        if name is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"id": args["user"], "name": name.lower(),
                                     "real_name": name, "profile": {"display_name": name, "real_name": name}}}

    def _api_chat_postEphemeral(self, args):
        self.responses.append({**args, "response_type": "ephemeral"})
        self.response_meta.append({"at": time.time(), "owner": args.get("user", "")})
        return {"ok": True, "message_ts": f"{time.time():.6f}"}

    def _api_apps_connections_open(self, args):
        if not self.socket_url:
            return {"ok": False, "error": "not_allowed_token_type"}
        return {"ok": True, "url": self.socket_url}

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
    """A person in a channel: types slash commands and clicks buttons. Slack sends what they do to the
    bot as signed HTTP requests, or as envelopes over the bot's Socket Mode connection."""

    def __init__(self, standin: SlackStandIn, bot_url: str, secret: str, user_id: str, channel: str = "C-OPS",
                 socket_mode=None, name: str = ""):
        self.standin = standin
        self.name = name or user_id
        self.bot_url = bot_url
        self.secret = secret
        self.user_id = user_id
        self.channel = channel
        self.socket_mode = socket_mode  # a SocketModeStandIn, or None for HTTP

    def _send(self, kind: str, payload: dict, **signing) -> int:
        """Deliver one command, click or event the way Slack would; the HTTP status (504: not acknowledged)."""
        if self.socket_mode is not None:
            return self.socket_mode.deliver(kind, payload)
        if kind == "events_api":
            return self._post(json.dumps(payload), "application/json", **signing)
        form = {"payload": json.dumps(payload)} if kind == "interactive" else payload
        return self._post(urllib.parse.urlencode(form), **signing)

    def _post(self, body: str, content_type: str = "application/x-www-form-urlencoded",
              timestamp: str | None = None, signature: str | None = None) -> int:
        return signed_post(self.bot_url, self.secret, body, content_type, timestamp, signature)


    def open_home(self) -> int:
        event = {"type": "event_callback", "team_id": "T1", "api_app_id": "A1", "event_id": f"Ev{time.time()}",
                 "event_time": int(time.time()), "event": {"type": "app_home_opened", "user": self.user_id,
                                                           "channel": "D1", "tab": "home"}}
        return self._send("events_api", event)

    def command(self, text: str, **signing) -> int:
        return self._send("slash_commands", {
            "token": "unused", "team_id": "T1", "team_domain": "test", "channel_id": self.channel,
            "channel_name": "ops", "user_id": self.user_id, "user_name": self.user_id.lower(),
            "command": "/rollback", "text": text, "api_app_id": "A1",
            "response_url": self.standin.response_url(self.user_id), "trigger_id": f"trig-{time.time()}",
        }, **signing)

    def click(self, message: dict, action_id: str, value: str | None = None, ticked: tuple[str, ...] = ()) -> int:
        """Click the button ``action_id`` (the one with ``value``, when several share the id), with the
        checkboxes named in ``ticked`` ticked, as Slack reports them in the payload's ``state``."""
        action, block_id = None, None
        for block in message["blocks"]:
            for el in block.get("elements", []) + ([block["accessory"]] if "accessory" in block else []):
                if el.get("action_id") == action_id and value in (None, el.get("value")) and action is None:
                    action, block_id = el, block.get("block_id", "b")
        if action is None:
            raise LookupError(f"no {action_id} button on the message")
        values: dict = {}
        for block in message["blocks"]:
            for el in block.get("elements", []):
                if el.get("type") == "checkboxes":
                    chosen = el["options"] if el.get("action_id") in ticked else []
                    values.setdefault(block.get("block_id", "b"), {})[el["action_id"]] = {
                        "type": "checkboxes", "selected_options": chosen}
        return self._send("interactive", {
            "state": {"values": values},
            "type": "block_actions", "team": {"id": "T1", "domain": "test"}, "api_app_id": "A1",
            "user": {"id": self.user_id, "name": self.user_id.lower(), "team_id": "T1"},
            "channel": {"id": self.channel, "name": "ops"}, "container": {
                "type": "message", "message_ts": message["ts"], "channel_id": self.channel},
            "message": {"type": "message", "ts": message["ts"], "text": message["text"], "blocks": message["blocks"]},
            "response_url": self.standin.response_url(self.user_id), "trigger_id": f"trig-{time.time()}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": block_id, "value": action["value"],
                         "text": action["text"], "action_ts": f"{time.time():.6f}"}],
        })


def signed_post(url: str, secret: str, body: str | bytes, content_type: str = "application/x-www-form-urlencoded",
                timestamp: str | None = None, signature: str | None = None) -> int:
    """POST ``body`` as Slack does: ``X-Slack-Request-Timestamp`` and the v0 signature of that timestamp
    and body, HMAC-SHA256 with the signing secret (``signature`` forces another, for tests of forged
    requests; bytes that are not UTF-8 are signed as they are). The HTTP status."""
    ts = timestamp or str(int(time.time()))
    data = body if isinstance(body, bytes) else body.encode()
    sig = signature or "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + data,
                                        hashlib.sha256).hexdigest()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code

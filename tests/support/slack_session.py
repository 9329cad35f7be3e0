"""Slack sessions for tests: the real Bolt app served by waitress (or over Socket Mode), the stand-in
Slack Web API, and the people in the channel, whose replies read like a conversation."""

from __future__ import annotations

import copy
import threading

import waitress

from bot.core.config import Settings
from bot.playground.slack import SlackStandIn, SlackUser
from bot.playground.socket_mode import SocketModeStandIn
from bot.slack.server import assemble, socket_mode, start_up, wsgi_app
from tests.support.waiting import wait_for

SECRET = "signing-secret-for-tests"
CHANNEL = "C-OPS"


class Workspace:
    """The running bot, its Slack, and the people in the channel."""

    def __init__(self, engine, standin, url, service, socket_mode=None):
        self.engine = engine
        self.standin = standin
        self.url = url
        self.service = service
        self.ana, self.bo, self.cy = (SlackUser(standin, url, SECRET, user, CHANNEL, socket_mode)
                                      for user in ("U-ANA", "U-BO", "U-CY"))

    def reply(self, n_before: int, timeout=30.0) -> dict:
        """The next ephemeral reply (response_url) after ``n_before`` replies."""
        return wait_for(lambda: self.standin.responses[n_before] if len(self.standin.responses) > n_before
                        else None, timeout, "an ephemeral reply")

    def says(self, who: SlackUser, text: str, timeout=30.0) -> str:
        """``who`` types ``/rollback text``; the ephemeral reply's text (or its blocks' text)."""
        n = len(self.standin.responses)
        assert who.command(text) == 200
        reply = self.reply(n, timeout)
        return "\n".join([reply.get("text") or "", all_text(reply) if reply.get("blocks") else ""])

    def clicks(self, who: SlackUser, message: dict, action_id: str, timeout=30.0, **state) -> str:
        """``who`` clicks a button; the ephemeral reply's text."""
        n = len(self.standin.responses)
        assert who.click(message, action_id, **state) == 200
        return self.reply(n, timeout)["text"]

    def card(self, n_before: int, timeout=60.0) -> dict:
        msgs = lambda: [m for m in self.standin.messages[CHANNEL] if not m.get("thread_ts")]  # noqa: E731
        return wait_for(lambda: msgs()[n_before] if len(msgs()) > n_before else None, timeout, "a card")

    def posts_card(self, who: SlackUser, text: str) -> Card:
        """``who`` types ``/rollback text`` and the bot posts a card in the channel."""
        n = self.cards()
        assert who.command(text) == 200
        return Card(self, self.card(n))

    def cards(self) -> int:
        return len([m for m in self.standin.messages[CHANNEL] if not m.get("thread_ts")])


class Card:
    """A message the bot posted in the channel, as people there see it while the bot edits it."""

    def __init__(self, ws: Workspace, msg: dict):
        self.ws, self.ts, self.first = ws, msg["ts"], copy.deepcopy(msg)

    @property
    def now(self) -> dict:
        return copy.deepcopy(self.ws.standin.message(CHANNEL, self.ts))

    def becomes(self, prefix: str, timeout: float = 60.0) -> dict:
        """Wait until the card's header starts with ``prefix`` (a ✅ or ❌ …); the card at that moment."""
        return wait_for(lambda: self.now if header(self.now).startswith(prefix) else None, timeout,
                        f"the card to become {prefix!r} (it is {header(self.now)!r})")

    def text(self) -> str:
        return all_text(self.now)


def header(msg: dict) -> str:
    return next((b["text"]["text"] for b in msg["blocks"] if b["type"] == "header"), "")


def seen(msg: dict) -> dict:
    """The message as a person saw it at that moment (the stand-in keeps editing its own copy)."""
    return copy.deepcopy(msg)


def all_text(msg: dict) -> str:
    parts = []
    for b in msg["blocks"]:
        if "text" in b and isinstance(b["text"], dict):
            parts.append(b["text"]["text"])
        parts += [f["text"] for f in b.get("fields", [])] + [e.get("text", "") for e in b.get("elements", [])
                                                             if isinstance(e.get("text"), str)]
    return "\n".join(parts)


def _serve_until_closed(server) -> None:
    try:
        server.run()
    except OSError:
        pass  # the test closed the server's socket under its loop: that is how it stops


def workspaces(make_engine, tmp_path):
    """A generator fixture body: yields ``start(policy, socket, **env)``, which starts a bot."""
    standin = SlackStandIn()
    standin.people.update({"U-ANA": "Ana", "U-BO": "Bo", "U-CY": "Cy"})
    servers, closers = [], []

    def start(policy: str = "", socket: bool = False, **overrides) -> Workspace:
        """The bot on HTTP, or with ``socket`` on a Socket Mode connection (SLACK_APP_TOKEN, no signing secret)."""
        env = {"SLACK_BOT_TOKEN": "xoxb-test-bot-token", "SLACK_API_URL": standin.api_url,
               "ROLLBACK_CHANNEL": "C-DEPLOYS", "ROLLBACK_WATCH_POLL": "0", **overrides}  # the watch: when asked
        env.update({"SLACK_APP_TOKEN": "xapp-test-app-token"} if socket else {"SLACK_SIGNING_SECRET": SECRET})
        if policy:
            (tmp_path / "policy.toml").write_text(policy)
            env["ROLLBACK_CONFIG"] = str(tmp_path / "policy.toml")
        made = make_engine(**env)  # an engine, or the settings of a bot of several services
        if isinstance(made, Settings):
            app, engine, service = assemble(made)
            closers.append(service.fleet.shutdown)
        else:
            app, engine, service = assemble(made.settings, made)
        closers.append(start_up(engine.settings, engine, service).set)
        if socket:
            far_end = SocketModeStandIn()
            standin.socket_url = far_end.url
            handler = socket_mode(app, engine.settings)
            handler.connect()
            closers.extend([handler.close, far_end.stop])
            return Workspace(engine, standin, None, service, far_end)
        server = waitress.create_server(wsgi_app(app, engine), host="127.0.0.1", port=0, threads=8)
        threading.Thread(target=_serve_until_closed, args=(server,), daemon=True).start()
        servers.append(server)
        return Workspace(engine, standin, f"http://127.0.0.1:{server.effective_port}/slack/events", service)

    yield start
    for server in servers:
        server.close()
    for close in closers:
        close()
    standin.stop()



"""Sessions in Slack: signed requests into the real Bolt app served by waitress, a stand-in Slack
Web API that keeps messages, and moto's AWS with the real Serverless CLI behind the engine."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import waitress

from bot.slack.server import assemble, wsgi_app
from tests.conftest import code_of, live_code
from tests.slack_standin import SlackStandIn, SlackUser

SECRET = "signing-secret-for-tests"
CHANNEL = "C-OPS"


def wait_for(predicate, timeout=60.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Workspace:
    """The running bot, its Slack, and the people in the channel."""

    def __init__(self, engine, standin, url, approvals):
        self.engine = engine
        self.standin = standin
        self.url = url
        self.approvals = approvals
        self.ana = SlackUser(standin, url, SECRET, "U-ANA", CHANNEL)
        self.bo = SlackUser(standin, url, SECRET, "U-BO", CHANNEL)
        self.cy = SlackUser(standin, url, SECRET, "U-CY", CHANNEL)

    def reply(self, n_before: int, timeout=30.0) -> dict:
        """The next ephemeral reply (response_url) after ``n_before`` replies."""
        return wait_for(lambda: self.standin.responses[n_before] if len(self.standin.responses) > n_before
                        else None, timeout, "an ephemeral reply")

    def card(self, n_before: int, timeout=60.0) -> dict:
        msgs = lambda: [m for m in self.standin.messages[CHANNEL] if not m.get("thread_ts")]  # noqa: E731
        return wait_for(lambda: msgs()[n_before] if len(msgs()) > n_before else None, timeout, "a card")

    def cards(self) -> int:
        return len([m for m in self.standin.messages[CHANNEL] if not m.get("thread_ts")])


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


@pytest.fixture
def workspace(make_engine, tmp_path):
    standin = SlackStandIn()
    servers = []

    def start(policy: str = "", **overrides) -> Workspace:
        env = {"SLACK_BOT_TOKEN": "xoxb-test-bot-token", "SLACK_SIGNING_SECRET": SECRET,
               "SLACK_API_URL": standin.api_url, "ROLLBACK_CHANNEL": "C-DEPLOYS", **overrides}
        if policy:
            (tmp_path / "policy.toml").write_text(policy)
            env["ROLLBACK_CONFIG"] = str(tmp_path / "policy.toml")
        engine = make_engine(**env)
        app, engine, approvals = assemble(engine.settings, engine)
        server = waitress.create_server(wsgi_app(app, engine), host="127.0.0.1", port=0, threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        return Workspace(engine, standin, f"http://127.0.0.1:{server.effective_port}/slack/events", approvals)

    yield start
    for server in servers:
        server.close()
    standin.stop()


def test_request_approve_and_watch_the_rollback_go_green(prod, workspace, service_history):
    ws = workspace()  # the same bucket and data dir as `prod`, which published v1 and v2 and deployed v2
    v1 = service_history.builds["v1"]

    assert ws.ana.command("prod previous") == 200
    card = seen(ws.card(0))
    assert header(card) == f"Roll back prod to {v1.commit[:7]}?"
    text = all_text(card)
    assert "Commits undone (1)" in text and "Bo Ops: Make hello say v2" in text
    assert "plugin set unchanged" in text and "no resources added or removed" in text
    assert "Requested by <@U-ANA>" in text

    assert ws.bo.click(card, "approve") == 200
    done = wait_for(lambda: header(ws.standin.message(CHANNEL, card["ts"])).startswith("✅"), 300, "a green card")
    final = ws.standin.message(CHANNEL, card["ts"])
    assert header(final) == f"✅ Rolled back: prod → {v1.commit[:7]}"
    assert all_text(final).count("✅") >= 6  # header and five steps
    assert "approved by <@U-BO>" in all_text(final)
    assert live_code() == code_of(service_history, "v1")
    thread = "\n".join(m["text"] for m in ws.standin.thread(CHANNEL, card["ts"]))
    assert "Service deployed to stack hello-service-prod" in thread
    assert done

    # a second click on the old card starts nothing
    n = len(ws.standin.responses)
    ws.bo.click(card, "approve")
    assert "already approved" in ws.reply(n)["text"] or "already done" in ws.reply(n)["text"]
    assert len([j for j in ws.engine.store.jobs(stage="prod") if j["state"] != "pending"]) == 1

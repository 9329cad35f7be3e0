"""Slack sessions that need the real Serverless CLI: a whole rollback deployed by osls against moto's
CloudFormation, over HTTP and over Socket Mode, and a cancel during a real stack update."""

from __future__ import annotations

import json
import sys

import pytest

from bot.core.keys import StageKey
from tests.conftest import SERVICE, code_of, live_code
from tests.support.procs import marker, pids_with
from tests.support.slack_session import CHANNEL, all_text, header, seen, workspaces
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def workspace(make_engine, tmp_path):
    yield from workspaces(make_engine, tmp_path)


def py_command(script: str) -> str:
    return f"{sys.executable} -c \"{script}\""


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
    wait_for(lambda: header(ws.standin.message(CHANNEL, card["ts"])).startswith("✅"), 300, "a green card")
    final = ws.standin.message(CHANNEL, card["ts"])
    assert header(final) == f"✅ Rolled back: prod → {v1.commit[:7]}"
    assert all_text(final).count("✅") >= 6  # header and five steps
    assert "approved by <@U-BO>" in all_text(final)
    assert live_code() == code_of(service_history, "v1")
    thread = "\n".join(m["text"] for m in ws.standin.thread(CHANNEL, card["ts"]))
    assert "Service deployed to stack hello-service-prod" in thread

    # a second click on the old card starts nothing
    n = len(ws.standin.responses)
    ws.bo.click(card, "approve")
    assert "already done" in ws.reply(n)["text"]
    assert len([j for j in ws.engine.store.jobs(stage="prod") if j.state != "pending"]) == 1

    # v2 is now marked bad and CI frozen: not a mistake to ask for it, the card warns
    ws.ana.command("prod b-v2")
    warned = all_text(ws.card(1))
    assert "⚠️" in warned and "is marked bad by <@U-BO>" in warned and "CI is frozen on prod" in warned
    n = len(ws.standin.responses)
    ws.ana.command("history prod")
    assert "job 1 *succeeded*" in ws.reply(n)["text"]
    n = len(ws.standin.responses)
    ws.bo.command("unfreeze prod")
    assert "`prod` unfrozen: CI may deploy again." in ws.reply(n)["text"]
    assert ws.engine.artifacts.read_index("prod").freeze is None


def test_socket_mode_session_needs_no_public_url(prod, workspace, service_history):
    ws = workspace(socket=True)
    ws.bo.socket_mode.wait_connected()
    n = len(ws.standin.responses)
    assert ws.ana.command("help") == 200
    assert "/rollback &lt;stage&gt;" in json.dumps(ws.reply(n)["blocks"])  # shown as /rollback <stage>

    assert ws.ana.command("prod previous") == 200
    card = seen(ws.card(0))
    assert header(card) == f"Roll back prod to {service_history.builds['v1'].commit[:7]}?"
    assert ws.bo.click(card, "approve") == 200
    wait_for(lambda: header(ws.standin.message(CHANNEL, card["ts"])).startswith(("✅", "❌")), 300, "the final card")
    assert header(ws.standin.message(CHANNEL, card["ts"])).startswith("✅")
    assert live_code() == code_of(service_history, "v1")
    # every envelope was acknowledged well inside Slack's 3 seconds, while the work went on after
    assert len(ws.bo.socket_mode.ack_seconds) == 3 and max(ws.bo.socket_mode.ack_seconds) < 1.0


def test_busy_stage_is_refused_naming_the_holder_and_cancel_stops_the_deploy(prod, workspace, tmp_path):
    mark = marker()
    ws = workspace(ROLLBACK_DEPLOY_COMMAND=py_command(
        f"import time; mark='{mark}'; print('deploying', flush=True); time.sleep(300)"))
    s = ws.standin
    ws.ana.command("prod previous")
    first = seen(ws.card(0))
    ws.bo.click(first, "approve")
    wait_for(lambda: pids_with(mark), 120, "the deploy to start")
    assert "⏳ Deploy" in all_text(wait_for(
        lambda: s.message(CHANNEL, first["ts"]) if "⏳ Deploy" in all_text(s.message(CHANNEL, first["ts"])) else None,
        10, "the checklist"))

    ws.cy.command("prod b-v1")
    second = seen(ws.card(1))
    n = len(s.responses)
    ws.ana.click(second, "approve")
    assert "stage prod is busy: job 1 started by U-BO is running" in ws.reply(n)["text"]

    n = len(s.responses)
    ws.ana.click(seen(s.message(CHANNEL, first["ts"])), "cancel_job")  # the Cancel button on the live card
    assert "Cancelling job 1" in ws.reply(n)["text"]
    final = wait_for(lambda: s.message(CHANNEL, first["ts"]) if header(s.message(CHANNEL, first["ts"])).startswith(
        "🛑") else None, 60, "the cancelled card")
    assert "*Why:* deploy: cancelled while running" in all_text(final)
    assert "Stack hello-service-prod is UPDATE_COMPLETE" in all_text(final)
    assert "Cancelled by <@U-ANA>" in all_text(final) and "Lambda runs" in all_text(final)
    assert not any(b["type"] == "actions" for b in final["blocks"])  # no Cancel button any more
    log_file = wait_for(lambda: [f for f in s.files if f.get("thread_ts") == first["ts"]], 10, "the log file")
    assert log_file[0]["filename"] == "rollback-job-1.log"
    assert ws.engine.store.lock_of(StageKey(SERVICE, "prod")) is None
    assert [j.state for j in ws.engine.store.jobs()] == ["refused", "cancelled"]

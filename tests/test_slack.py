"""Sessions in Slack: signed requests into the real Bolt app served by waitress, a stand-in Slack
Web API that keeps messages, and moto's AWS with the real Serverless CLI behind the engine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from slack_sdk.signature import SignatureVerifier

from bot.playground.slack import SlackUser
from tests.conftest import BUCKET, SERVICE, code_of, live_code
from tests.serverless_fixture import sls_env
from tests.support.slack_session import CHANNEL, SECRET, all_text, header, seen, workspaces
from tests.waiting import wait_for


@pytest.fixture
def workspace(make_engine, tmp_path):
    yield from workspaces(make_engine, tmp_path)


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
    assert "already done" in ws.reply(n)["text"]
    assert len([j for j in ws.engine.store.jobs(stage="prod") if j["state"] != "pending"]) == 1

    # v2 is now marked bad and CI frozen: not a mistake to ask for it, the card warns
    ws.ana.command("prod b-v2")
    warned = all_text(ws.card(1))
    assert "⚠️" in warned and "is marked bad by U-BO" in warned and "CI is frozen on prod" in warned
    n = len(ws.standin.responses)
    ws.ana.command("history prod")
    assert "job 1 *succeeded*" in ws.reply(n)["text"]
    n = len(ws.standin.responses)
    ws.bo.command("unfreeze prod")
    assert "`prod` unfrozen: CI may deploy again." in ws.reply(n)["text"]
    assert ws.engine.artifacts.read_index("prod").freeze is None


POLICY = """
[stages.prod]
requesters = ["U-ANA", "U-BO"]
approvers = ["S-SRE"]
approver_must_differ = true
channels = ["C-OPS"]
notify_channel = "C-DEPLOYS"
"""


def test_each_mistake_gets_an_ephemeral_reply_that_says_what_to_do(prod, workspace, service_history):
    ws = workspace(POLICY)
    ws.standin.groups["S-SRE"] = ["U-BO", "U-CY"]
    s = ws.standin

    def reply_to(user, text):
        n = len(s.responses)
        assert user.command(text) == 200
        return ws.reply(n)["text"]

    assert "Stage `staging` has no builds. Known stages: prod." in reply_to(ws.ana, "staging previous")
    assert "No build of stage prod matches `beef`" in reply_to(ws.ana, "prod beef")
    assert "at least 4 characters" in reply_to(ws.ana, "prod ab")
    v1 = service_history.builds["v1"]
    twin = v1.commit[:4] + ("0" if v1.commit[4] != "0" else "1") + "f" * 35  # shares v1's first 4 characters
    ws.engine.artifacts.publish("prod", twin, v1.package, build_id="twin")
    ambiguous = reply_to(ws.ana, f"prod {v1.commit[:4]}")
    assert "matches 2 builds" in ambiguous and f"`{v1.commit[:12]}` build `b-v1`" in ambiguous
    assert "No rollback of `prod` is running here." in reply_to(ws.ana, "cancel prod")
    assert "not allowed to request rollbacks of `prod`" in reply_to(ws.cy, "prod previous")
    elsewhere = SlackUser(s, ws.url, SECRET, "U-ANA", "C-RANDOM")
    assert "are requested in <#C-OPS>, not here" in reply_to(elsewhere, "prod previous")
    assert ws.cards() == 0  # nothing was posted, nothing half-started
    refusals = [a for a in ws.engine.store.audit_trail("prod") if a["action"] == "request.refused"]
    assert {a["actor"] for a in refusals} == {"U-CY", "U-ANA"}

    assert ws.bo.command("prod previous") == 200  # Bo may request, and is an approver (via S-SRE)
    card = seen(ws.card(0))
    n = len(s.responses)
    ws.bo.click(card, "approve")  # but not of his own plan: the policy wants a second person
    assert "needs a second person" in ws.reply(n)["text"]
    n = len(s.responses)
    ws.ana.click(card, "approve")  # Ana may request but is not in the approvers group
    assert "not an approver for `prod`" in ws.reply(n)["text"]
    assert [a["actor"] for a in ws.engine.store.audit_trail("prod") if a["action"] == "approve.refused"] == [
        "U-ANA", "U-BO"]
    assert ws.engine.store.job(int(card["blocks"][-1]["elements"][0]["value"]))["state"] == "pending"

    ws.cy.click(card, "cancel_plan")  # an approver may withdraw it
    closed = wait_for(lambda: "Cancelled by <@U-CY>" in all_text(s.message(CHANNEL, card["ts"])), 10, "closed")
    assert closed
    n = len(s.responses)
    ws.cy.click(card, "approve")  # approve after cancel does nothing but say so
    assert "no longer" in ws.reply(n)["text"] or "withdrawn" in ws.reply(n)["text"]
    assert live_code() == code_of(service_history, "v2")


def test_forged_and_stale_requests_are_rejected(prod, workspace):
    ws = workspace()
    assert ws.ana.command("prod previous", signature="v0=" + "0" * 64) == 401
    stale = str(int(time.time()) - 10 * 60)
    assert ws.ana.command("prod previous", timestamp=stale) == 401
    time.sleep(1)
    assert ws.cards() == 0 and ws.engine.store.jobs() == []


def test_slack_url_check_gets_its_challenge_back_and_unsigned_requests_nothing(prod, workspace):
    ws = workspace()
    body = json.dumps({"type": "url_verification", "token": "unused", "challenge": "c-7f3a"})
    ts = str(int(time.time()))
    sig = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts}
    req = urllib.request.Request(ws.url, data=body.encode(), headers={**headers, "X-Slack-Signature": sig})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["challenge"] == "c-7f3a"
    unsigned = urllib.request.Request(ws.url, data=body.encode(), headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 401


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


def test_an_expired_card_cannot_be_approved(prod, workspace):
    ws = workspace()
    ws.approvals.ttl = 0.5
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    time.sleep(1)
    n = len(ws.standin.responses)
    ws.bo.click(card, "approve")
    assert "This plan expired. Ask again with `/rollback prod" in ws.reply(n)["text"]
    wait_for(lambda: "This plan expired." in all_text(ws.standin.message(CHANNEL, card["ts"])), 10, "closed card")
    assert [j["state"] for j in ws.engine.store.jobs()] == ["expired"]


def test_help_list_and_status(prod, workspace, service_history):
    ws = workspace()
    s = ws.standin
    n = len(s.responses)
    ws.ana.command("help")
    help_text = all_text(ws.reply(n))
    assert "/rollback &lt;stage&gt; &lt;sha|build-id|previous&gt;" in help_text and "Stages: `prod`" in help_text
    n = len(s.responses)
    ws.ana.command("prod")
    listing = ws.reply(n)
    text = all_text(listing)
    assert "*LIVE*" in text and "b-v2" in text and "b-v1" in text
    rollback_buttons = [b["accessory"] for b in listing["blocks"] if "accessory" in b]
    assert [b["text"]["text"] for b in rollback_buttons] == ["Roll back to this"]  # not on the live build
    n = len(s.responses)
    ws.ana.command("status")
    assert "*Running rollbacks*\nnone" in all_text(ws.reply(n))


def py_command(script: str) -> str:
    return f"{sys.executable} -c \"{script}\""


def test_busy_stage_is_refused_naming_the_holder_and_cancel_stops_the_deploy(prod, workspace, tmp_path):
    started = tmp_path / "deploying"
    ws = workspace(ROLLBACK_DEPLOY_COMMAND=py_command(
        f"import time; open('{started}','w').write('x'); print('deploying', flush=True); time.sleep(300)"))
    s = ws.standin
    ws.ana.command("prod previous")
    first = seen(ws.card(0))
    ws.bo.click(first, "approve")
    wait_for(started.exists, 120, "the deploy to start")
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
    assert not any(b["type"] == "actions" for b in final["blocks"])  # no Cancel button any more
    log_file = wait_for(lambda: [f for f in s.files if f.get("thread_ts") == first["ts"]], 10, "the log file")
    assert log_file[0]["filename"] == "rollback-job-1.log"
    assert ws.engine.store.lock_of("prod") is None
    assert [j["state"] for j in ws.engine.store.jobs()] == ["refused", "cancelled"]


def test_a_50000_line_deploy_edits_the_card_at_most_every_2_seconds_and_loses_no_line(prod, workspace):
    ws = workspace(ROLLBACK_DEPLOY_COMMAND=py_command(
        "import time; [(print('line %d' % i, flush=(i % 500 == 0)), time.sleep(0 if i % 100 else 0.01)) "
        "for i in range(50000)]"))
    s = ws.standin
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    ws.bo.click(card, "approve")
    final = wait_for(lambda: s.message(CHANNEL, card["ts"]) if header(s.message(CHANNEL, card["ts"])).startswith(
        "❌") else None, 300, "the final card")
    assert "*Why:* verify:" in all_text(final)  # nothing was really deployed, and verify says so
    job = ws.engine.store.jobs()[0]
    full = ws.engine.jobs.log_path(job["id"]).read_text().splitlines()  # the full log, on disk
    assert [line for line in full if line.startswith("line ")] == [f"line {i}" for i in range(50000)]
    stored = [line for line in ws.engine.store.output(job["id"]) if line.startswith("line ")]
    assert len(stored) < 6000 and stored[:1000] == [f"line {i}" for i in range(1000)]  # sqlite: head and tail
    assert stored[-1] == "line 49999"
    assert next(f for f in s.files if f["filename"] == f"rollback-job-{job['id']}.log")["length"] > 50000 * 6
    updates = [t for t, m in s.calls if m == "chat.update"]
    gaps = [b - a for a, b in zip(updates, updates[1:], strict=False)]
    assert all(g >= 1.9 for g in gaps[:-1]), gaps  # the last one is the final state, sent at once
    minutes = (job["finished"] - job["started"]) / 60
    assert len(s.calls) - 2 <= max(40, 40 * minutes + 5)  # auth.test and the plan card aside
    assert final["blocks"] and "line 49999" in all_text(final)  # the log's tail is on the card


def test_a_429_storm_during_progress_delays_updates_but_the_final_state_arrives(prod, workspace):
    ws = workspace(ROLLBACK_DEPLOY_COMMAND=py_command("import time; print('deploying', flush=True); time.sleep(4)"))
    s = ws.standin
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    s.rate_limit("chat.update", 8, retry_after=1)
    s.rate_limit("chat.postMessage", 3, retry_after=1)
    ws.bo.click(card, "approve")
    final = wait_for(lambda: s.message(CHANNEL, card["ts"]) if header(s.message(CHANNEL, card["ts"])).startswith(
        "❌") else None, 120, "the final card")
    assert "verify:" in all_text(final)
    assert ws.engine.store.jobs()[0]["state"] == "failed"  # the job ran to its end whatever Slack did


def test_ci_deploy_notification_rolls_back_with_one_click_and_home_shows_the_stage(prod, workspace, service_history,
                                                                                  aws_env, tmp_path):
    ws = workspace()
    s = ws.standin
    v1, v2 = service_history.builds["v1"], service_history.builds["v2"]
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE,
           "ROLLBACK_PREFIX": "rollback/", "ROLLBACK_DATA_DIR": str(tmp_path / "ci"),
           "SLACK_BOT_TOKEN": "xoxb-ci-token", "SLACK_API_URL": s.api_url, "ROLLBACK_CHANNEL": CHANNEL}

    def cli(*args, **extra):
        return subprocess.run([sys.executable, "-m", "bot", *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60, cwd=service_history.work.path)

    # CI records v1 as live again, then v2: each change of live build is announced
    assert cli("mark-deployed", "--stage", "prod", "--commit", v1.commit, "--by", "ci-bot").returncode == 0
    done = cli("mark-deployed", "--stage", "prod", "--commit", v2.commit, "--by", "ci-bot")
    assert done.returncode == 0, done.stderr
    note = ws.card(1)
    text = all_text(note)
    assert f"*prod* is now running `{v2.commit[:7]}` build `b-v2`" in text and "Deployed by ci-bot" in text
    assert f"Commits since `{v1.commit[:7]}`" in text and "Bo Ops: Make hello say v2" in text

    # Slack down: CI still succeeds, with a warning
    down = cli("mark-deployed", "--stage", "prod", "--commit", v1.commit, SLACK_API_URL="http://127.0.0.1:9/api/")
    assert down.returncode == 0 and "warning: could not post the deploy notification" in down.stderr
    cli("mark-deployed", "--stage", "prod", "--commit", v2.commit)

    # the button on the notification opens the plan for `previous`
    ws.ana.click(seen(note), "plan_build")
    card = ws.card(3)
    assert header(card) == f"Roll back prod to {v1.commit[:7]}?"

    assert ws.bo.open_home() == 200
    home = wait_for(lambda: s.home.get("U-BO"), 10, "the home tab")
    assert f"*prod*: live `{v2.commit[:7]}` (build `b-v2`)" in all_text(home)


def test_a_rollback_cut_short_by_a_restart_is_announced_when_the_bot_starts(make_engine, workspace):
    crashed = make_engine()  # same data dir as the bot started below
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: the bot that ran this job is gone
    job_id = crashed.store.create_job(stage="prod", target_commit="a" * 40, target_build="7", requested_by="U-ANA",
                                      approved_by="U-BO", state="running", started=time.time(), channel=CHANNEL,
                                      stack_name="hello-service-prod", region="us-east-1", host=socket.gethostname(),
                                      pid=dead.pid)
    crashed.store.acquire_lock("prod", job_id, "U-BO")
    ws = workspace()
    note = wait_for(lambda: ws.standin.messages.get("C-DEPLOYS"), 10, "the announcement")[0]["text"]
    assert f"Rollback job {job_id} of `prod` was interrupted by a restart" in note
    assert "stack hello-service-prod is DOES_NOT_EXIST" in note and "Check the stage" in note
    assert ws.engine.store.job(job_id)["state"] == "interrupted" and ws.engine.store.lock_of("prod") is None

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

from bot.core.keys import StageKey
from bot.playground.slack import SlackUser
from bot.slack.ids import parse_job
from tests.conftest import BUCKET, SERVICE, fast_code, live_code
from tests.support.serverless_fixture import sls_env
from tests.support.slack_session import CHANNEL, SECRET, all_text, header, seen
from tests.support.waiting import wait_for

POLICY = """
[stages.prod]
requesters = ["U-ANA", "U-BO"]
approvers = ["S-SRE"]
approver_must_differ = true
channels = ["C-OPS"]
notify_channel = "C-DEPLOYS"
"""

PROD = StageKey(SERVICE, "prod")


def test_each_mistake_gets_an_ephemeral_reply_that_says_what_to_do(fast_prod, fast_workspace, fast_service):
    ws = fast_workspace(POLICY)
    ws.standin.groups["S-SRE"] = ["U-BO", "U-CY"]
    s = ws.standin

    def reply_to(user, text):
        n = len(s.responses)
        assert user.command(text) == 200
        return ws.reply(n)["text"]

    assert "Stage `staging` has no builds. Known stages: prod." in reply_to(ws.ana, "staging previous")
    assert "No build of stage prod matches `beef`" in reply_to(ws.ana, "prod beef")
    assert "at least 4 characters" in reply_to(ws.ana, "prod ab")
    v1 = fast_service.commits["v1"]
    twin = v1[:4] + ("0" if v1[4] != "0" else "1") + "f" * 35  # shares v1's first 4 characters
    ws.engine.artifacts.publish("prod", twin, fast_service.packages["v1"], build_id="twin")
    ambiguous = reply_to(ws.ana, f"prod {v1[:4]}")
    assert "matches 2 builds" in ambiguous and f"`{v1[:12]}` build `b-v1`" in ambiguous
    assert "No rollback of `prod` is running here." in reply_to(ws.ana, "cancel prod")
    assert "not allowed to request rollbacks of `prod`" in reply_to(ws.cy, "prod previous")
    elsewhere = SlackUser(s, ws.url, SECRET, "U-ANA", "C-RANDOM")
    assert "are requested in <#C-OPS>, not here" in reply_to(elsewhere, "prod previous")
    assert ws.cards() == 0  # nothing was posted, nothing half-started
    refusals = [a for a in ws.engine.store.audit_trail("prod") if a.action == "request.refused"]
    assert {a.actor for a in refusals} == {"U-CY", "U-ANA"}

    assert ws.bo.command("prod previous") == 200  # Bo may request, and is an approver (via S-SRE)
    card = seen(ws.card(0))
    n = len(s.responses)
    ws.bo.click(card, "approve")  # but not of his own plan: the policy wants a second person
    assert "needs a second person" in ws.reply(n)["text"]
    n = len(s.responses)
    ws.ana.click(card, "approve")  # Ana may request but is not in the approvers group
    assert "not an approver for `prod`" in ws.reply(n)["text"]
    assert [a.actor for a in ws.engine.store.audit_trail("prod") if a.action == "approve.refused"] == [
        "U-ANA", "U-BO"]
    assert ws.engine.store.job(parse_job(card["blocks"][-1]["elements"][0]["value"])).state == "pending"

    ws.cy.click(card, "cancel_plan")  # an approver may withdraw it
    wait_for(lambda: "Cancelled by <@U-CY>" in all_text(s.message(CHANNEL, card["ts"])), 10, "the closed card")
    n = len(s.responses)
    ws.cy.click(card, "approve")  # approve after cancel does nothing but say so
    assert "no longer" in ws.reply(n)["text"] or "withdrawn" in ws.reply(n)["text"]
    assert live_code() == fast_code(fast_service, "v2")


def test_forged_and_stale_requests_are_rejected(fast_prod, fast_workspace):
    ws = fast_workspace()
    assert ws.ana.command("prod previous", signature="v0=" + "0" * 64) == 401
    stale = str(int(time.time()) - 10 * 60)
    assert ws.ana.command("prod previous", timestamp=stale) == 401
    assert ws.cards() == 0 and ws.engine.store.jobs() == []  # refused before anything was queued


def test_slack_url_check_gets_its_challenge_back_and_unsigned_requests_nothing(fast_prod, fast_workspace):
    ws = fast_workspace()
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


def test_an_expired_card_cannot_be_approved(fast_prod, fast_workspace):
    ws = fast_workspace()
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    ws.service.clock = lambda: time.time() + 15 * 60 + 1  # the buttons' 15 minutes have passed
    n = len(ws.standin.responses)
    ws.bo.click(card, "approve")
    assert "This plan expired. Ask again with `/rollback prod" in ws.reply(n)["text"]
    wait_for(lambda: "This plan expired." in all_text(ws.standin.message(CHANNEL, card["ts"])), 10, "closed card")
    assert [j.state for j in ws.engine.store.jobs()] == ["expired"]


def test_help_list_and_status(fast_prod, fast_workspace, fast_service):
    ws = fast_workspace()
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
    # v3 (published, never deployed), live v2 without a button, then v1
    assert [b["text"]["text"] for b in rollback_buttons] == ["Roll forward to this", "Roll back to this"]
    n = len(s.responses)
    ws.ana.command("status")
    assert "*Running rollbacks*\nnone" in all_text(ws.reply(n))


def py_command(script: str) -> str:
    return f"{sys.executable} -c \"{script}\""


def test_a_50000_line_deploy_edits_the_card_at_most_every_2_seconds_and_loses_no_line(fast_prod, fast_workspace):
    ws = fast_workspace(ROLLBACK_DEPLOY_COMMAND=py_command(
        "import time; [(print('line %d' % i, flush=(i % 500 == 0)), time.sleep(0 if i % 100 else 0.002)) "
        "for i in range(50000)]"))
    s = ws.standin
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    ws.bo.click(card, "approve")
    final = wait_for(lambda: s.message(CHANNEL, card["ts"]) if header(s.message(CHANNEL, card["ts"])).startswith(
        "❌") else None, 300, "the final card")
    assert "*Why:* verify:" in all_text(final)  # nothing was really deployed, and verify says so
    job = ws.engine.store.jobs()[0]
    full = ws.engine.jobs.log_path(job.id).read_text().splitlines()  # the full log, on disk
    assert [line for line in full if line.startswith("line ")] == [f"line {i}" for i in range(50000)]
    stored = [line for line in ws.engine.store.output(job.id) if line.startswith("line ")]
    assert len(stored) < 6000 and stored[:1000] == [f"line {i}" for i in range(1000)]  # sqlite: head and tail
    assert stored[-1] == "line 49999"
    uploaded = wait_for(lambda: [f for f in s.files if f["filename"] == f"rollback-job-{job.id}.log"], 10, "the log")
    assert uploaded[0]["length"] > 50000 * 6
    updates = [t for t, m in s.calls if m == "chat.update"]
    gaps = [b - a for a, b in zip(updates, updates[1:], strict=False)]
    assert all(g >= 1.9 for g in gaps[:-1]), gaps  # the last one is the final state, sent at once
    minutes = (job.finished - job.started) / 60
    assert len(s.calls) - 2 <= max(40, 40 * minutes + 5)  # auth.test and the plan card aside
    assert final["blocks"] and "line 49999" in all_text(final)  # the log's tail is on the card


def test_a_429_storm_during_progress_delays_updates_but_the_final_state_arrives(fast_prod, fast_workspace):
    ws = fast_workspace(
        ROLLBACK_DEPLOY_COMMAND=py_command("import time; print('deploying', flush=True); time.sleep(2)"))
    s = ws.standin
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    s.rate_limit("chat.update", 2, retry_after=1)
    s.rate_limit("chat.postMessage", 1, retry_after=1)
    ws.bo.click(card, "approve")
    final = wait_for(lambda: s.message(CHANNEL, card["ts"]) if header(s.message(CHANNEL, card["ts"])).startswith(
        "❌") else None, 120, "the final card")
    assert "verify:" in all_text(final)
    assert ws.engine.store.jobs()[0].state == "failed"  # the job ran to its end whatever Slack did
    # 429s were really sent (the thread's last lines are posted after the final card, so wait for them)
    assert wait_for(lambda: "chat.postMessage" in s.rate_limited, 30, "the thread post's 429")
    assert "chat.update" in s.rate_limited


def test_ci_deploy_notification_rolls_back_with_one_click_and_home_shows_the_stage(
        fast_prod, fast_workspace, fast_service, aws_env, tmp_path):
    ws = fast_workspace('[stages."*"]\nnotify_channel = "C-OPS"\n')  # where CI posts (ROLLBACK_CHANNEL below)
    s = ws.standin
    v1, v2 = fast_service.commits["v1"], fast_service.commits["v2"]
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE,
           "ROLLBACK_PREFIX": "rollback/", "ROLLBACK_DATA_DIR": str(tmp_path / "ci"),
           "SLACK_BOT_TOKEN": "xoxb-ci-token", "SLACK_API_URL": s.api_url, "ROLLBACK_CHANNEL": CHANNEL}

    def cli(*args, **extra):
        return subprocess.run([sys.executable, "-m", "bot", *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60, cwd=fast_service.work.path)

    # CI records v1 as live again, then v2: each change of live build is announced
    assert cli("mark-deployed", "--stage", "prod", "--commit", v1, "--by", "ci-bot").returncode == 0
    done = cli("mark-deployed", "--stage", "prod", "--commit", v2, "--by", "ci-bot")
    assert done.returncode == 0, done.stderr
    note = ws.card(1)
    text = all_text(note)
    assert f"*prod* is now running `{v2[:7]}` build `b-v2`" in text and "Deployed by ci-bot" in text
    assert f"Commits since `{v1[:7]}`" in text and "Bo Ops: Make hello say v2" in text

    # Slack down: CI still succeeds, with a warning
    down = cli("mark-deployed", "--stage", "prod", "--commit", v1, SLACK_API_URL="http://127.0.0.1:9/api/")
    assert down.returncode == 0 and "warning: could not post the deploy notification" in down.stderr
    cli("mark-deployed", "--stage", "prod", "--commit", v2)

    # the button on the notification opens the plan for `previous`
    ws.ana.click(seen(note), "plan_build")
    card = ws.card(3)
    assert header(card) == f"Roll back prod to {v1[:7]}?"

    assert ws.bo.open_home() == 200
    home = wait_for(lambda: s.home.get("U-BO"), 10, "the home tab")
    assert f"*prod*: live `{v2[:7]}` (build `b-v2`)" in all_text(home)

    # CI deploys v3: v2's notification is edited to say it no longer is live, and a late click on
    # v2's notification says so, then offers the plan from what is live now
    v3 = fast_service.commits["v3"]
    assert cli("mark-deployed", "--stage", "prod", "--commit", v3, "--by", "ci-bot").returncode == 0
    struck = all_text(ws.card(2))
    assert f"~🚀 *prod* is now running `{v2[:7]}` (build `b-v2`)~" in struck
    assert f"No longer live: deployed to `{v3[:7]}` (build `b-v3`) by ci-bot <!date^" in struck
    assert "Roll back" not in struck and not [b for b in ws.card(2)["blocks"] if b["type"] == "actions"]
    said = ws.clicks(ws.ana, seen(note), "plan_build")
    assert f"`{v2[:7]}` (build `b-v2`) is no longer live: deployed to `{v3[:7]}` (build `b-v3`) by ci-bot" in said
    plan = ws.card(5)
    assert header(plan) == f"Roll back prod to {v2[:7]}?"

    # a rollback edits the notification of the build it replaced too
    ws.bo.click(plan, "approve")
    wait_for(lambda: "No longer live: rolled back to" in all_text(ws.card(4)), 60, "v3's notification edited")
    assert f"rolled back to `{v2[:7]}` (build `b-v2`) by <@U-BO>" in all_text(ws.card(4))


def test_a_rollback_cut_short_by_a_restart_is_announced_when_the_bot_starts(make_fast_engine, fast_workspace):
    crashed = make_fast_engine()  # same data dir as the bot started below
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: the bot that ran this job is gone
    job_id = crashed.store.create_job(stage="prod", target_commit="a" * 40, target_build="7", requested_by="U-ANA",
                                      approved_by="U-BO", state="running", started=time.time(), channel=CHANNEL,
                                      stack_name="hello-service-prod", region="us-east-1", host=socket.gethostname(),
                                      pid=dead.pid)
    crashed.store.acquire_lock(PROD, job_id, "U-BO")
    ws = fast_workspace()
    note = wait_for(lambda: ws.standin.messages.get("C-DEPLOYS"), 10, "the announcement")[0]["text"]
    assert f"Rollback job {job_id} of `prod` was interrupted by a restart" in note
    assert "stack hello-service-prod is DOES_NOT_EXIST" in note and "Check the stage" in note
    assert ws.engine.store.job(job_id).state == "interrupted" and ws.engine.store.lock_of(PROD) is None


def test_help_says_each_command_in_one_line_and_a_typo_gets_a_suggestion(fast_prod, fast_workspace):
    ws = fast_workspace()
    help_text = ws.says(ws.ana, "help")
    for syntax in ("/rollback &lt;stage&gt;`", "/rollback status`", "/rollback history &lt;stage&gt;`",
                   "/rollback unfreeze &lt;stage&gt;`", "/rollback cancel &lt;stage&gt;`", "/rollback help`"):
        line = next(x for x in help_text.splitlines() if syntax in x)
        assert len(line.split("` ", 1)[1]) > 3, line  # a description follows the command, on its line
    assert "`prd` has no builds: did you mean `prod`?" in ws.says(ws.ana, "prd previous")
    assert "Too many words. Usage: `/rollback &lt;stage&gt;`" in ws.says(ws.ana, "prod a b c")


def test_a_finished_card_keeps_the_story_and_its_times_read_in_each_readers_zone(
        fast_prod, fast_workspace, fast_service):
    ws = fast_workspace()
    c = fast_service.commits
    card = ws.posts_card(ws.ana, "prod previous")
    ws.bo.click(card.first, "approve")
    text = all_text(card.becomes("✅"))
    assert f"*From* `{c['v2'][:7]}` (build `b-v2`) *→ to* `{c['v1'][:7]}` (build `b-v1`)" in text
    assert f"Undoes 1 commit:\n• `{c['v2'][:7]}` Bo Ops: Make hello say v2" in text
    assert "requested by <@U-ANA> approved by <@U-BO> · started <!date^" in text and "· ended <!date^" in text
    assert " ago" not in text and " ago" not in all_text(card.first)  # nothing that goes stale in the channel
    job = ws.engine.store.jobs(stage="prod")[0]
    steps = sum(e["duration"] or 0 for e in ws.engine.store.events(job.id) if e["status"] in ("finished", "skipped"))
    assert job.finished - job.started >= steps  # the job's total is never less than its steps

    # history, in Slack and at a terminal: when, how long, who, from → to, the outcome, and the card
    link = f"https://demo.slack.com/archives/C-OPS/p{card.ts.replace('.', '')}"
    history = ws.says(ws.cy, "history prod")
    assert f"job {job.id} *succeeded* `prod` `{c['v2'][:7]}` → `{c['v1'][:7]}` (build `b-v1`)" in history
    assert "requested by <@U-ANA>, approved by <@U-BO>" in history and f"<{link}|card>" in history
    assert "<!date^" in history and " in " in history
    s = ws.engine.settings
    env = {**s.child_env, "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_SERVICE": s.service, "ROLLBACK_REPO": s.repo,
           "ROLLBACK_DATA_DIR": str(s.data_dir), "SLACK_BOT_TOKEN": "xoxb-test", "SLACK_API_URL": s.slack_api_url}
    run = lambda *a: subprocess.run([sys.executable, "-m", "bot", *a], env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=60)
    shown = run("history", "prod")
    assert "requested by Ana, approved by Bo" in shown.stdout and f"card: {link}" in shown.stdout, shown.stderr
    assert "U-ANA" not in shown.stdout  # names, never raw ids
    as_json = json.loads(run("history", "prod", "--json").stdout)[0]
    assert as_json["approved_by"] == {"id": "U-BO", "name": "Bo"} and as_json["card"] == link
    assert ws.standin.count("users.info") == 2  # once per person: the names are kept in the store


def test_the_bolt_app_starts_without_a_warning_about_its_token(make_fast_engine, monkeypatch, caplog):
    from bot.engine.service import RollbackService
    from bot.playground.slack import SlackStandIn
    from bot.slack.server import build_app

    standin = SlackStandIn()
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-the-environment")  # as in every real deploy
    engine = make_fast_engine(SLACK_BOT_TOKEN="xoxb-from-the-environment", SLACK_SIGNING_SECRET=SECRET,
                              SLACK_API_URL=standin.api_url)
    try:
        with caplog.at_level("WARNING"):
            app = build_app(engine.settings, engine, RollbackService(engine, engine.settings.policy))
    finally:
        standin.stop()
    assert app.client.token == "xoxb-from-the-environment" and standin.count("auth.test") == 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("slack_bolt")] == []

"""Two `rollback-bot serve` replicas with the same settings and separate data folders, as behind a load
balancer: Slack delivers a command to one and the click on its card to the other. What they must agree
on is in S3 (the plan's ticket, the stage's lease); each keeps its own sqlite."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from bot.adapters.store import Store
from bot.playground.slack import SlackStandIn
from tests.conftest import BUCKET, fast_code, live_code
from tests.support.fast_service import hold_file
from tests.support.replicas import Replica, bot_env, cards, new_cards, reply_after
from tests.support.slack_session import Card, all_text, header
from tests.support.waiting import wait_for


@pytest.fixture
def standin():
    slack = SlackStandIn()
    slack.people.update({"U-ANA": "Ana", "U-BO": "Bo", "U-CY": "Cy"})
    yield slack
    slack.stop()


@pytest.fixture
def replicas(fast_prod, fast_service, aws_env, tmp_path, standin):
    """``start(**env)``: replicas A and B of one bot, each with its own data folder; deploys held until ``hold``
    goes."""
    hold = hold_file("replicas")
    hold.touch()
    started = []

    def start(**extra):
        for name in ("a", "b"):
            env = bot_env(aws_env, fast_service.origin, tmp_path / name, standin, SLS_TEST_DEPLOY_WAIT_FOR=str(hold),
                          ROLLBACK_SANDBOX="auto", **extra)
            started.append(Replica(env, standin))
        return started[0], started[1], hold

    yield start
    hold.unlink(missing_ok=True)
    for replica in started:
        replica.stop()


def starts_in(tmp_path, name: str) -> list:
    trail = Store(tmp_path / name / "rollback-bot.sqlite").audit_trail("prod")
    return [a for a in trail if a.action == "rollback.start"]


def test_a_card_posted_by_one_replica_is_approved_on_the_other_once_and_the_stage_is_held_for_both(
        replicas, standin, fast_service, aws_env, tmp_path):
    a, b, hold = replicas()
    n = cards(standin)
    assert a.ana.command("prod previous") == 200  # the command reached replica A: A posts the card
    card = Card(SimpleNamespace(standin=standin), new_cards(standin, n))
    assert b.bo.click(card.first, "approve") == 200  # the click reached replica B
    wait_for(lambda: header(card.now).startswith("⏳") or None, 60, "the card to show the rollback running")

    r = len(standin.responses)
    assert a.cy.click(card.first, "approve") == 200  # a second click on the same card, at A
    said = reply_after(standin, r)
    assert "Someone already approved this plan (U-BO, on " in said and "Nothing was deployed" in said

    n = cards(standin)
    assert b.ana.command("prod b-v3") == 200  # a second plan for the stage, at B, approved at A
    second = new_cards(standin, n)
    r = len(standin.responses)
    assert a.bo.click(second, "approve") == 200
    refused = reply_after(standin, r)
    assert "stage prod is busy: a rollback holds it (job 1 approved by" in refused
    assert f"on {socket.gethostname()} (pid {b.proc.pid})" in refused

    ci = subprocess.run([sys.executable, "-m", "bot", "check-freeze", "--stage", "prod"], capture_output=True,
                        text=True, env=bot_env(aws_env, fast_service.origin, tmp_path / "ci", standin), timeout=60)
    assert ci.returncode != 0 and "rollback in progress on stage prod" in ci.stdout + ci.stderr

    hold.unlink()
    done = all_text(card.becomes("✅", timeout=90))
    assert "approved by <@U-BO>" in done
    assert live_code() == fast_code(fast_service, "v1")
    assert len(starts_in(tmp_path, "b")) == 1 and starts_in(tmp_path, "a") == []  # one deploy, by B


def test_cancel_clicked_on_the_replica_that_does_not_run_the_job_stops_it(replicas, standin, fast_service):
    a, b, hold = replicas()
    n = cards(standin)
    assert a.ana.command("prod previous") == 200
    card = Card(SimpleNamespace(standin=standin), new_cards(standin, n))
    assert b.bo.click(card.first, "approve") == 200
    wait_for(lambda: header(card.now).startswith("⏳") or None, 60, "the card to show the rollback running")
    r = len(standin.responses)
    assert a.ana.click(card.now, "cancel_job") == 200  # Cancel on the live card, delivered to A
    said = reply_after(standin, r)
    assert f"the replica on {socket.gethostname()} that runs it (job 1 there) stops" in said
    text = all_text(card.becomes("🛑", timeout=60))
    assert "Cancelled by <@U-ANA>" in text
    assert live_code() == fast_code(fast_service, "v2")


def test_a_plan_withdrawn_on_one_replica_cannot_be_approved_on_the_other(replicas, standin, fast_service):
    a, b, _ = replicas()
    n = cards(standin)
    assert a.ana.command("prod previous") == 200
    first = new_cards(standin, n)
    r = len(standin.responses)
    assert b.ana.click(first, "cancel_plan") == 200
    wait_for(lambda: "Cancelled by <@U-ANA>" in all_text(standin.message("C-OPS", first["ts"])) or None, 30,
             "the card to close")
    assert a.bo.click(first, "approve") == 200
    assert "This plan was cancelled (U-ANA)" in reply_after(standin, r)
    assert live_code() == fast_code(fast_service, "v2")


def test_a_killed_replicas_job_is_said_once_by_another_and_the_next_job_takes_the_stage(
        replicas, standin, fast_service, tmp_path):
    a, b, hold = replicas(ROLLBACK_LEASE_SECONDS="3")
    n = cards(standin)
    assert a.ana.command("prod previous") == 200
    card = Card(SimpleNamespace(standin=standin), new_cards(standin, n))
    assert b.bo.click(card.first, "approve") == 200
    wait_for(lambda: header(card.now).startswith("⏳") or None, 60, "the card to show the rollback running")
    b.kill()  # B's host goes away mid-deploy: nobody lets the lease go, nobody says anything

    def said() -> list[str]:
        return [m["text"] for ch in ("C-OPS", "C-DEPLOYS") for m in standin.messages[ch]
                if m["text"].startswith("⚠️ Rollback") and "was interrupted" in m["text"]]

    first = wait_for(lambda: said() or None, 60, "a replica to say the job was interrupted")
    assert f"the bot running it ({socket.gethostname()}, job 1 there)" in first[0] and "stage is free again" in first[0]
    thread = [m for m in standin.messages["C-OPS"] if m.get("thread_ts") == card.ts and "interrupted" in m["text"]]
    assert len(thread) == 1  # on the card's thread
    assert header(card.now) == "⚠️ Rollback interrupted: prod" and "cancel_job" not in str(card.now)
    again = Replica(b.env, standin)  # B starts again with its data folder: its own job, already said by A
    try:
        assert Store(tmp_path / "b" / "rollback-bot.sqlite").job(1).state == "interrupted"
        assert len(said()) == 2  # the card's thread and the stage's notification channel, once each
        hold.unlink()
        n = cards(standin)
        assert again.ana.command("prod b-v3") == 200
        second = Card(SimpleNamespace(standin=standin), new_cards(standin, n))
        assert a.bo.click(second.first, "approve") == 200
        second.becomes("✅", timeout=90)
    finally:
        again.stop()
    assert live_code() == fast_code(fast_service, "v3")
    assert len(said()) == 2


def test_a_ticket_rewritten_in_the_bucket_after_its_card_was_posted_approves_nothing(
        replicas, standin, fast_service, s3):
    """A writer of the bucket points a pending plan at another build; the card still shows the first."""
    a, b, _ = replicas()
    n = cards(standin)
    assert a.ana.command("prod previous") == 200
    card = new_cards(standin, n)
    [obj] = s3.list_objects_v2(Bucket=BUCKET, Prefix="rollback/hello-service/prod/plans/")["Contents"]
    ticket = json.loads(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
    ticket.update(target_commit=fast_service.commits["v3"], target_build="b-v3",
                  plan_json=ticket["plan_json"].replace(fast_service.commits["v1"], fast_service.commits["v3"]))
    s3.put_object(Bucket=BUCKET, Key=obj["Key"], Body=json.dumps(ticket).encode())
    r = len(standin.responses)
    assert b.bo.click(card, "approve") == 200
    assert "not what its card showed: someone changed it in the bucket" in reply_after(standin, r)
    assert live_code() == fast_code(fast_service, "v2")


def test_an_app_card_posted_by_one_replica_is_approved_on_the_other_once(app_env, repo, lam, standin, tmp_path):
    from tests.support.app_fixtures import code, live

    slack = {"SLACK_BOT_TOKEN": "xoxb-test-bot-token", "SLACK_API_URL": standin.api_url,
             "SLACK_SIGNING_SECRET": "signing-secret-for-tests", "ROLLBACK_CHANNEL": "C-DEPLOYS",
             "ROLLBACK_WATCH_POLL": "0", "ROLLBACK_SANDBOX": "auto"}
    a, b = (Replica({**app_env, **slack, "ROLLBACK_DATA_DIR": str(tmp_path / name)}, standin) for name in "ab")
    try:
        n = cards(standin)
        assert a.ana.command(f"prod {repo.commits['c1'][:8]}") == 200  # the whole app, at A
        card = Card(SimpleNamespace(standin=standin), new_cards(standin, n))
        assert "*3 of 3 services move*" in all_text(card.first)
        assert b.cy.click(card.first, "approve") == 200  # approved at B
        wait_for(lambda: not header(card.now).startswith("Roll back") or None, 60, "the app to start")
        r = len(standin.responses)
        assert a.cy.click(card.first, "approve") == 200
        assert "Someone already approved this plan (U-CY, on " in reply_after(standin, r)
        card.becomes("✅", timeout=120)
    finally:
        a.stop()
        b.stop()
    for svc in ("api", "worker", "billing"):
        assert live(lam, svc) == code(repo, svc, "v1")
    starts = [e for e in Store(tmp_path / "b" / "rollback-bot.sqlite").audit_trail("prod")
              if e.action == "app.approve"]
    assert len(starts) == 1 and not [e for e in Store(tmp_path / "a" / "rollback-bot.sqlite").audit_trail("prod")
                                     if e.action == "app.approve"]


def test_a_forged_ticket_and_expired_lease_never_make_the_bot_edit_or_post_where_the_bucket_says(
        fast_prod, fast_workspace, s3):
    """A writer of the bucket plants a lease run out and a ticket naming a message in another channel."""
    now, uid = time.time(), "ab" * 16
    ticket = {"uid": uid, "service": "hello-service", "stage": "prod", "state": "approved", "target_commit": "a" * 40,
              "target_build": "b-v1", "live_commit": "", "live_build": "", "requested_by": "U-ANA", "origin": "slack",
              "channel": "C-EVIL", "message_ts": "1.000001", "plan_json": "{}", "created": now, "expires": now + 60,
              "closed_by": "U-BO", "card_mac": "0" * 64}
    s3.put_object(Bucket=BUCKET, Key=f"rollback/hello-service/prod/plans/{uid}.json", Body=json.dumps(ticket).encode())
    s3.put_object(Bucket=BUCKET, Key="rollback/hello-service/prod/lock.json", Body=json.dumps({
        "service": "hello-service", "stage": "prod", "job": 9, "token": "t", "approved_by": "U-BO", "requested_by": "",
        "host": "gone", "pid": 1, "origin": "slack", "since": now - 60, "until": now - 30, "plan": uid}).encode())
    ws = fast_workspace(ROLLBACK_LEASE_SECONDS="3")
    said = wait_for(lambda: [m["text"] for m in ws.standin.messages["C-DEPLOYS"] if "was interrupted" in m["text"]]
                    or None, 30, "the stage's channel to be told")
    assert "(gone, job 9 there)" in said[0]
    assert ws.standin.messages["C-EVIL"] == []  # nothing posted, nothing edited where only the bucket says
    assert not [c for c in ws.standin.calls if c[1] == "chat.update"]
    assert fast_prod.leases.current("prod") is None

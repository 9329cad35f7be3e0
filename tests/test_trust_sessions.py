"""Trust, as people in Slack would test it: an approval approves what the card showed, the policy fails
closed everywhere, hostile text stays text, secrets stay secret. The real Bolt app with signed
requests, the fast engine (real git, moto, a small real deploy script): no Node.js."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

from bot.playground.slack import SlackUser, signed_post
from bot.slack.app import make_client, sweep_expired
from bot.slack.server import housekeeping
from tests.conftest import fast_code, live_code
from tests.support.fast_service import deploy, hold_file
from tests.support.slack_session import CHANNEL, SECRET, all_text, header, seen
from tests.support.waiting import wait_for

POLICY = """
[stages.prod]
requesters = ["U-ANA", "U-BO"]
approvers = ["U-BO", "U-CY"]
approver_must_differ = true
channels = ["C-OPS"]
"""


def card_text(ws, card) -> str:
    return all_text(ws.standin.message(CHANNEL, card["ts"]))


def test_approving_a_card_after_ci_deployed_again_deploys_nothing_and_offers_the_new_plan(
        fast_prod, fast_workspace, fast_service, aws_env):
    ws = fast_workspace()
    c = fast_service.commits
    card = seen(ws.card(0) if ws.ana.command("prod previous") == 200 else None)
    shown = all_text(card)
    target = ws.engine.artifacts.read_index("prod").find(c["v1"], "b-v1")
    assert "Commits undone (1)" in shown and f"package sha256 `{target.sha256[:12]}`" in shown

    # CI deploys v3 while the card waits: approving the old card must not roll back v3 unseen
    deploy(fast_service.packages["v3"])
    ws.engine.artifacts.mark_deployed("prod", c["v3"], "b-v3", by="ci")
    said = ws.clicks(ws.bo, card, "approve")
    assert "Nothing was deployed" in said
    assert f"the live build changed from {c['v2'][:7]} to {c['v3'][:7]}" in said
    assert "the commits undone changed (1 shown, 2 now, 1 new)" in said
    assert live_code() == fast_code(fast_service, "v3")
    outdated = wait_for(lambda: "Out of date" in card_text(ws, card) and ws.standin.message(CHANNEL, card["ts"]),
                        10, "the card marked out of date")
    assert not any(e.get("action_id") == "approve" for b in outdated["blocks"] for e in b.get("elements", []))
    job = ws.engine.store.jobs(stage="prod")[0]
    assert job.state == "outdated" and "out of date at approval" in job.reason
    assert [a.action for a in ws.engine.store.audit_trail("prod")][0] == "approve.outdated"

    # "Plan again" plans `previous` afresh: now v2, undoing v3 only; approving that one runs it
    ws.bo.click(seen(outdated), "plan_build")
    fresh = seen(ws.card(1))
    assert header(fresh) == f"Roll back prod to {c['v2'][:7]}?" and "Commits undone (1)" in all_text(fresh)
    ws.cy.click(fresh, "approve")
    wait_for(lambda: header(ws.standin.message(CHANNEL, fresh["ts"])).startswith(("✅", "❌")), 60, "the result")
    assert header(ws.standin.message(CHANNEL, fresh["ts"])).startswith("✅ Rolled back")
    assert live_code() == fast_code(fast_service, "v2")


def test_requester_approver_and_channel_are_all_checked_again_at_the_click(fast_prod, fast_workspace, tmp_path):
    ws = fast_workspace(POLICY)
    ws.service.policies.check_every = 0  # see a changed policy file at once
    card = seen(ws.card(0) if ws.ana.command("prod previous") == 200 else None)
    assert "approval needs one of U-BO, U-CY other than the requester" in all_text(card)

    elsewhere = SlackUser(ws.standin, ws.url, SECRET, "U-CY", "C-RANDOM")
    assert "are requested in <#C-OPS>, not here" in ws.clicks(elsewhere, card, "approve")

    # Ana is taken off the requesters after posting: her plan can no longer be approved
    (tmp_path / "policy.toml").write_text(POLICY.replace('"U-ANA", "U-BO"', '"U-BO"') + "\n")
    said = ws.clicks(ws.cy, card, "approve")
    assert "The requester may no longer request rollbacks of `prod`" in said
    assert ws.engine.store.jobs(stage="prod")[0].state == "pending"
    refused = [a for a in ws.engine.store.audit_trail("prod") if a.action == "approve.refused"]
    assert [a.actor for a in refused] == ["U-CY", "U-CY"]


def test_channel_rules_cover_every_action_and_an_uncovered_stage_is_refused(fast_prod, fast_workspace, tmp_path):
    ws = fast_workspace(POLICY)
    elsewhere = SlackUser(ws.standin, ws.url, SECRET, "U-BO", "C-RANDOM")
    for text in ("prod", "history prod", "cancel prod", "unfreeze prod", "prod previous"):
        assert "are requested in <#C-OPS>, not here" in ws.says(elsewhere, text), text
    assert ws.cards() == 0

    # a policy that names only staging: prod (which has builds) is refused, naming the file to edit
    (tmp_path / "policy.toml").write_text('[stages.staging]\napprovers = ["U-BO"]\n')
    ws.service.policies.check_every = 0
    said = ws.says(ws.bo, "prod previous")
    assert f"The policy file {tmp_path / 'policy.toml'} has no rule for stage `prod`" in said
    assert "Add [stages.prod]" in said and ws.cards() == 0


def test_without_a_policy_every_card_and_the_home_tab_say_so_and_the_audit_records_it(
        fast_prod, fast_workspace):
    ws = fast_workspace()
    ws.ana.command("prod previous")
    assert "No policy: anyone may approve" in all_text(ws.card(0))
    ws.ana.open_home()
    home = wait_for(lambda: ws.standin.home.get("U-ANA"), 10, "the home tab")
    assert "No policy: anyone may approve" in json.dumps(home)
    assert ws.engine.store.audit_trail("prod")[0].detail["policy"] == "none"


def test_the_start_up_log_prints_each_stage_rule_and_a_broken_new_file_keeps_the_old_one(
        fast_prod, fast_workspace, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rollback-bot"):
        ws = fast_workspace(POLICY)
    assert "prod: requesters: U-ANA, U-BO; approvers: U-BO, U-CY; approver must differ" in caplog.text
    assert 'any other stage: refused (no [stages."*"])' in caplog.text
    ws.service.policies.check_every = 0
    (tmp_path / "policy.toml").write_text(POLICY + "aprovers = []\n")  # a typo in the new file
    with caplog.at_level(logging.ERROR, logger="rollback-bot"):
        assert "not allowed to request" in ws.says(ws.cy, "prod previous")  # the old rules still hold
    assert "the policy file changed but is invalid; the previous policy stays in force" in caplog.text
    assert "unknown key `aprovers` in [stages.prod]" in caplog.text


HOSTILE = "<!channel> see <https://evil.example|the runbook> ``` `x` &"


def test_what_people_wrote_reaches_the_card_as_text(fast_prod, fast_workspace, fast_service, aws_env):
    ws = fast_workspace()
    ws.engine.artifacts.publish("prod", fast_service.commits["v1"], fast_service.packages["v1"],
                                build_id="b-evil", author=HOSTILE, message=HOSTILE)
    ws.ana.command("prod b-evil")
    text = all_text(ws.card(0))
    assert "&lt;!channel&gt; see &lt;https://evil.example|the runbook&gt;" in text
    assert "<!channel>" not in text and "<https://evil" not in text and "```" not in text
    listing = ws.says(ws.ana, "prod")
    assert "<!channel>" not in listing and "&lt;!channel&gt;" in listing


def test_a_token_in_the_repository_url_never_reaches_slack_sqlite_or_the_log(
        fast_prod, fast_workspace, caplog):
    token = "ghs_" + "T0pSecretInstallationToken1234"
    ws = fast_workspace(ROLLBACK_REPO=f"https://x-access-token:{token}@127.0.0.1:9/org/hello.git")
    with caplog.at_level(logging.DEBUG):
        said = ws.says(ws.ana, "prod previous")
    assert "cannot fetch https://***@127.0.0.1:9/org/hello.git" in said
    everything = [json.dumps(ws.standin.responses), json.dumps(dict(ws.standin.messages)), caplog.text,
                  repr(ws.engine.store.audit_trail(limit=100)), repr(ws.engine.store.jobs(limit=100))]
    assert not any(token in part or "x-access-token" in part for part in everything)


def test_secrets_printed_by_a_deploy_are_masked_in_slack_sqlite_and_the_log_file(fast_prod, fast_workspace):
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7secretkeymaterial\n-----END RSA PRIVATE KEY-----"
    secrets = ["ghp_" + "a1" * 18, "npm_" + "b2" * 18, "AKIA" + "C" * 16, "xoxb-1234-5678-abcdefgh"]
    ws = fast_workspace(SLS_TEST_DEPLOY_PRINT="\n".join([*secrets, pem, "//registry/:_authToken=hunter2hunter2"]))
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    ws.bo.click(card, "approve")
    wait_for(lambda: header(ws.standin.message(CHANNEL, card["ts"])).startswith("✅"), 60, "a green card")
    job_id = ws.engine.store.jobs(stage="prod")[0].id
    stored = "\n".join(ws.engine.store.output(job_id))
    log_file = ws.engine.jobs.log_path(job_id).read_text()
    thread = wait_for(lambda: [m for m in ws.standin.thread(CHANNEL, card["ts"]) if "Service deployed" in m["text"]]
                      and json.dumps(ws.standin.thread(CHANNEL, card["ts"])), 10, "the whole thread")
    for where in (stored, log_file, thread):
        assert "Deploying hello-service" in where or "Deploying hello-service" in stored
        for secret in [*secrets, "MIIEowIBAAKCAQEA7secretkeymaterial", "hunter2hunter2"]:
            assert secret not in where


def test_junk_requests_get_4xx_not_500(fast_prod, fast_workspace):
    ws = fast_workspace()

    def post(body: bytes, ts: str, sign: bool = True) -> int:
        return signed_post(ws.url, SECRET, body, timestamp=ts, signature=None if sign else "v0=00")

    now = str(int(time.time()))
    assert post(b"x" * (1024 * 1024 + 1), now) == 413
    assert post(b"command=%2Frollback&text=help", "not-a-number") == 401
    assert post(b"command=%2Frollback&text=\xff\xfe", now) == 400  # signed, but not UTF-8
    assert post(b"command=%2Frollback&text=help", now, sign=False) == 401
    assert ws.engine.store.jobs() == []


def test_per_person_limits_and_expired_plans_are_swept(fast_prod, fast_workspace):
    ws = fast_workspace()
    ws.service.gate.limits = type(ws.service.gate.limits)(plans_per_minute=3, pending_per_user=2)
    ws.ana.command("prod previous")
    first = seen(ws.card(0))
    ws.ana.command("prod b-v1")
    ws.card(1)
    assert "You have 2 plans waiting for approval" in ws.says(ws.ana, "prod b-v1")
    assert ws.cards() == 2
    ws.service.clock = lambda: time.time() + 16 * 60  # the buttons' 15 minutes pass: both plans expire
    housekeeping(ws.engine.settings, ws.engine, ws.service, make_client(ws.engine.settings))
    ws.service.clock = time.time
    assert "This plan expired" in card_text(ws, first)
    assert [j.state for j in ws.engine.store.jobs(stage="prod")] == ["expired", "expired"]
    assert "You asked for 3 plans in the last minute" in ws.says(ws.ana, "prod previous")
    assert sweep_expired(ws.service, make_client(ws.engine.settings)) == 0


def test_a_stale_cancel_button_cancels_only_its_own_job(fast_prod, fast_workspace, fast_service, tmp_path):
    hold = hold_file("hold-deploy")
    ws = fast_workspace(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    ws.ana.command("prod previous")
    first = seen(ws.card(0))
    ws.bo.click(first, "approve")
    running = wait_for(lambda: any(e.get("action_id") == "cancel_job" for b in ws.standin.message(
        CHANNEL, first["ts"])["blocks"] for e in b.get("elements", [])) and seen(
        ws.standin.message(CHANNEL, first["ts"])), 30, "the running card with its Cancel button")
    wait_for(lambda: header(ws.standin.message(CHANNEL, first["ts"])).startswith("✅"), 60, "job 1 done")
    hold.touch()  # the next deploy waits until the file goes
    ws.ana.command("prod b-v2")
    second = seen(ws.card(1))
    ws.bo.click(second, "approve")
    job2 = wait_for(lambda: ws.engine.jobs.running_job("prod"), 30, "job 2 running")
    busy = ws.posts_card(ws.cy, "prod b-v1")  # a plan made while job 2 runs says so before anyone clicks
    assert f"⏳ Job {job2.id} is running on `prod` now (approved by <@U-BO>)" in all_text(busy.first)
    said = ws.clicks(ws.cy, running, "cancel_job")  # job 1's old button
    assert "already ended" in said and ws.engine.jobs.running_job("prod") is not None
    hold.unlink()
    wait_for(lambda: header(ws.standin.message(CHANNEL, second["ts"])).startswith("✅"), 60, "job 2 done")
    assert live_code() == fast_code(fast_service, "v2")
    assert ws.engine.jobs.subscriber_count() == 0  # both jobs' card reporters were dropped when they ended


def check_freeze(engine, commit: str) -> tuple[int, str]:
    """What CI asks before deploying: `rollback-bot check-freeze`, a real process reading S3 only."""
    s = engine.settings
    env = {**s.child_env, "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_SERVICE": s.service, "ROLLBACK_PREFIX": s.prefix}
    proc = subprocess.run([sys.executable, "-m", "bot", "check-freeze", "--stage", "prod", "--commit", commit],
                          env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_rolling_forward_again_marks_nothing_bad_and_lifts_the_freeze_only_when_asked(
        fast_prod, fast_workspace, fast_service):
    ws = fast_workspace()
    c = fast_service.commits

    def run(ref: str, n: int, ticked=()) -> dict:
        card = ws.posts_card(ws.ana, f"prod {ref}")
        ws.bo.click(card.first, "approve", ticked=ticked)
        return card.becomes("✅")

    run("previous", 0)  # v2 → v1: v2 is bad, CI frozen
    assert check_freeze(ws.engine, c["v2"])[0] == 1 and live_code() == fast_code(fast_service, "v1")
    assert "is frozen" in check_freeze(ws.engine, c["v1"])[1]

    card = ws.posts_card(ws.ana, "prod b-v2")  # the fix was fine after all: v2 again is a roll forward
    forward = card.first
    assert header(forward) == f"Roll forward prod to {c['v2'][:7]}?"
    assert "Commits brought back (1)" in all_text(forward)
    assert any(e.get("type") == "checkboxes" for b in forward["blocks"] for e in b.get("elements", []))
    ws.bo.click(forward, "approve")  # the box left unticked: the freeze stays
    assert header(card.becomes("✅")) == f"✅ Rolled forward: prod → {c['v2'][:7]}"
    index = ws.engine.artifacts.read_index("prod")
    assert index.find(c["v2"], "b-v2").bad is None and index.find(c["v1"], "b-v1").bad is None
    assert index.freeze is not None and index.previous()[0].build_id == "b-v1"
    code, said = check_freeze(ws.engine, c["v2"])
    assert code == 1 and "is frozen" in said and "marked bad" not in said

    run("b-v1", 2)  # back to v1 once more: only v2, newer than v1, is marked
    run("b-v2", 3, ticked=("lift_freeze",))  # and forward, lifting the freeze this time
    index = ws.engine.artifacts.read_index("prod")
    assert index.freeze is None and index.find(c["v2"], "b-v2").bad is None
    assert check_freeze(ws.engine, c["v2"]) == (0, f"prod: not frozen, {c['v2'][:12]} not marked bad\n")
    assert live_code() == fast_code(fast_service, "v2")


def test_deploy_output_in_the_thread_is_text(fast_prod, fast_workspace):
    ws = fast_workspace(SLS_TEST_DEPLOY_PRINT=HOSTILE)
    ws.ana.command("prod previous")
    card = seen(ws.card(0))
    ws.bo.click(card, "approve")
    wait_for(lambda: header(ws.standin.message(CHANNEL, card["ts"])).startswith("✅"), 60, "a green card")
    # the last batch of output goes to the thread right after the final card
    thread = wait_for(lambda: "\n".join(m["text"] for m in ws.standin.thread(CHANNEL, card["ts"])) if any(
        "&lt;!channel&gt;" in m["text"] for m in ws.standin.thread(CHANNEL, card["ts"])) else None, 10, "the thread")
    assert "<!channel>" not in thread and "<https://evil" not in thread
    assert thread.count("```") % 2 == 0

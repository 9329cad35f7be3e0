"""Slack as a newcomer uses it: every suggestion a card makes works when typed as shown, history and
status name what the cards name, a mistyped service gets the closest one, unfreezing is announced, and
the App Home keeps to the policy and to Slack's limits. The real Bolt app with signed requests, the
three-service monorepo of the app tests (fast deploy script, moto), no Node.js."""

from __future__ import annotations

import json

from bot.adapters.store import StageBusy
from bot.core.jobs import Job, JobState
from bot.core.keys import StageKey
from bot.core.records import HeldLock
from bot.core.stage_index import Artifact, LiveRecord, Mark, StageIndex
from bot.engine.refusals import Refused
from bot.slack import blocks as kit
from bot.slack.app import error_text
from tests.support.fast_service import hold_file
from tests.support.slack_session import CHANNEL, SECRET, all_text
from tests.support.waiting import wait_for


def channel_texts(ws) -> list[str]:
    return [m.get("text", "") for m in ws.standin.messages[CHANNEL] if not m.get("thread_ts")]


def test_the_finished_cards_unfreeze_command_works_as_typed_and_the_channel_hears_of_it(app, repo):
    ws = app()
    card = ws.posts_card(ws.ana, "api prod api-v1")
    ws.bo.click(card.first, "approve")
    done = all_text(card.becomes("✅"))
    assert "`/rollback unfreeze api prod` when the fix is in" in done
    assert ws.service.index(StageKey("api", "prod")).freeze is not None

    said = ws.says(ws.bo, "unfreeze api prod")  # exactly what the card says
    assert "`api prod` unfrozen: CI may deploy again" in said
    assert ws.service.index(StageKey("api", "prod")).freeze is None
    announced = wait_for(lambda: [t for t in channel_texts(ws) if "lifted the CI freeze" in t], 10,
                         "the channel told that CI may deploy again")
    assert "<@U-BO> lifted the CI freeze on `api prod`: CI may deploy again" in announced[0]


def test_the_app_card_history_and_status_name_the_services_as_typed(app, repo, tmp_path):
    held = hold_file("hold-the-deploys")
    held.write_text("")
    ws = app(SLS_TEST_DEPLOY_WAIT_FOR=str(held))
    try:
        card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
        ws.cy.click(card.first, "approve")
        running = card.becomes("⏳ Rolling back the app")
        app_id = int(all_text(running).split("App job ", 1)[1].split()[0])
        status = ws.says(ws.bo, "status")
        # the card says "App job N"; status says the same, with the services under it
        assert f"app job {app_id} approved by <@U-CY>" in status and "job 1 " not in status.split("app job")[0]
        assert "worker running" in status
    finally:
        held.unlink(missing_ok=True)
    done = all_text(card.becomes("✅ Rolled back the app", timeout=90))
    for svc in ("api", "worker", "billing"):
        assert f"`/rollback unfreeze {svc} prod`" in done
    assert "&lt;service&gt;" not in done and "<service>" not in done
    assert "CI may deploy again" in ws.says(ws.bo, "unfreeze worker prod")  # works as shown

    history = ws.says(ws.bo, "history prod")
    assert f"app job {app_id} *succeeded* `the app in prod` → `{repo.commits['c1'][:7]}`" in history
    assert "(build ``)" not in history and "`?` →" not in history
    for svc in ("api", "worker", "billing"):
        assert f"{svc} `" in history and f"(build `{svc}-v1`) succeeded" in history


def test_a_mistyped_service_gets_the_closest_one_and_usage_names_the_service_forms(app):
    ws = app()
    said = ws.says(ws.ana, "apii prod previous")
    assert "This bot serves no service `apii`. Did you mean `/rollback api prod previous`?" in said
    assert "`api`" in said and "Too many words" not in said
    usage = ws.says(ws.ana, "prod previous now please")
    assert "Usage:" in usage and "/rollback &lt;service&gt; &lt;stage&gt;" in usage


def test_stages_kept_to_a_channel_stay_out_of_other_channels_and_the_app_home(fast_prod, fast_workspace):
    ws = fast_workspace('[stages.prod]\nchannels = ["C-INCIDENT"]\n\n[stages."*"]\n')
    ws.engine.artifacts.update_index("prod", lambda i: setattr(i, "freeze", Mark("U-BO", "secret incident", 1.0)))
    status = ws.says(ws.ana, "status")  # typed in C-OPS
    assert "secret incident" not in status and "`prod`" not in status
    assert "1 more stage not shown here: the policy keeps them to their own channels" in status
    assert ws.ana.open_home() == 200
    home = wait_for(lambda: ws.standin.home.get("U-ANA"), 10, "the App Home")
    text = json.dumps(home)
    assert "secret incident" not in text and "1 stage not shown" in text


def test_a_lock_holders_name_is_never_markup_in_a_refusal():
    busy = StageBusy(StageKey("api", "prod"), HeldLock("api", "prod", 4, "alarm:<!channel> *5xx* <https://x|y>"))
    said = error_text(Refused(str(busy), "busy"))
    assert "<!channel>" not in said and "<https://" not in said and "*5xx*" not in said
    assert "job 4 started by alarm:" in said


def test_titles_say_roll_forward_when_it_was_one():
    forward = json.dumps({"forward": True})
    for state, title in ((JobState.CANCELLED, "🛑 Roll forward cancelled"), (JobState.FAILED, "❌ Roll forward failed"),
                         (JobState.INTERRUPTED, "⚠️ Roll forward interrupted")):
        assert kit.job_title(Job(1, "prod", state, plan_json=forward)) == title
    assert kit.job_title(Job(1, "prod", JobState.CANCELLED, plan_json="{}")) == "🛑 Rollback cancelled"


def test_the_app_home_keeps_to_slacks_100_blocks_at_50_services_and_3_stages():
    sha = "a" * 40
    art = Artifact(sha, "b-1", "k", "0" * 64, 1, 1.0, "Ana", "v1")
    stages = [(StageIndex(f"svc{n}", stage, artifacts=[art], history=[LiveRecord(sha, "b-1", 2.0, "ci")],
                          freeze=Mark("U-BO", "rolled back", 3.0)), HeldLock("svc", "prod", n, "U-BO"))
              for n in range(50) for stage in ("dev", "staging", "prod")]
    jobs = [Job(n, "prod", JobState.SUCCEEDED, service=f"svc{n}", target_commit=sha, target_build="b-1",
                started=1.0, finished=2.0) for n in range(10)]
    blocks = kit.home_blocks(stages, jobs, 10.0, several=True)
    assert len(blocks) <= 100
    text = "\n".join(b.get("text", {}).get("text", "") for b in blocks)
    assert "svc0 · dev" in text and "svc49 · prod" in text  # every row is there
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in blocks)


def test_help_and_usage_on_a_bot_of_one_service_still_read_as_before(fast_prod, fast_workspace):
    ws = fast_workspace()
    assert "Too many words. Usage: `/rollback &lt;stage&gt;`" in ws.says(ws.ana, "prod a b c")
    assert SECRET not in ws.says(ws.ana, "help")


def test_an_out_of_date_app_card_offers_plan_again_and_the_new_card_can_be_approved(app, repo, lam):
    from bot.adapters.artifacts import ArtifactStore, make_s3_client
    from tests.support.app_fixtures import BUCKET, code, live

    ws = app()
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    # CI rolls billing back to v1 by hand while the card waits: the plan the card shows is no longer the plan
    ArtifactStore(make_s3_client(2), BUCKET, "billing", "rollback/").mark_deployed(
        "prod", repo.commits["c1"], "billing-v1", by="ci")
    said = ws.clicks(ws.cy, card.first, "approve")
    assert "Nothing was deployed: the plan changed since the card was posted (billing:" in said
    outdated = wait_for(lambda: "Out of date" in card.text() and card.now, 10, "the card marked out of date")
    assert "the app in prod" in all_text(outdated)
    assert live(lam, "api") == code(repo, "api", "v2")  # nothing moved

    ws.cy.click(outdated, "plan_build")  # Plan again: the app's plan, made afresh
    fresh = ws.card(1)
    assert all_text(fresh).count("left as it is") == 1 and "*2 of 3 services move*" in all_text(fresh)
    n = len(ws.standin.responses)
    assert ws.bo.click(fresh, "approve") == 200
    wait_for(lambda: "✅ Rolled back the app" in json.dumps(ws.standin.message(CHANNEL, fresh["ts"]),
                                                          ensure_ascii=False), 90,
             f"the new card to finish ({ws.standin.responses[n:]})")
    assert live(lam, "api") == code(repo, "api", "v1") and live(lam, "worker") == code(repo, "worker", "v1")

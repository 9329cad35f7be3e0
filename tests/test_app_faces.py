"""App rollbacks in Slack: `/rollback cancel <stage>`, the live card's Slack call budget, the export warnings
and a failure that cancels the rest of its phase. The repository and its fixtures are test_app's (three
services, an export and an import)."""

from __future__ import annotations

import time

from bot.core.actor import Actor
from tests.support.app_fixtures import code, live
from tests.support.fast_service import hold_file
from tests.support.slack_session import CHANNEL, all_text
from tests.support.waiting import wait_for


def test_rollback_cancel_stage_stops_the_app_rollback_running_there(app, repo, lam, tmp_path):
    held = hold_file("hold-the-deploys")
    held.write_text("")
    ws = app(SLS_TEST_DEPLOY_WAIT_FOR=str(held))
    try:
        assert "No rollback of `prod` is running here." in ws.says(ws.bo, "cancel prod")
        card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
        ws.cy.click(card.first, "approve")
        card.becomes("⏳ Rolling back the app")
        # Bo, an approver of prod, neither asked nor approved: the stage's one command stops the app's run
        assert "Cancelling app rollback" in ws.says(ws.bo, "cancel prod")
        done = card.becomes("🛑 App rollback cancelled")
    finally:
        held.unlink(missing_ok=True)
    assert "Cancelled by" in all_text(done)
    assert all(live(lam, svc) == code(repo, svc, "v2") for svc in ("api", "worker", "billing"))

def test_rollback_cancel_stage_names_the_services_when_several_of_their_own_run(app, repo, tmp_path):
    held = hold_file("hold-the-deploys")
    held.write_text("")
    ws = app(SLS_TEST_DEPLOY_WAIT_FOR=str(held))
    try:
        for svc in ("api", "worker"):
            card = ws.posts_card(ws.ana, f"{svc} prod {svc}-v1")
            ws.bo.click(card.first, "approve")
            card.becomes("⏳")
        said = ws.says(ws.bo, "cancel prod")
        assert "Several rollbacks are running in `prod`: `api` (job" in said and "`worker` (job" in said
        assert "`/rollback cancel api prod`" in said
        assert "Cancelling job" in ws.says(ws.bo, "cancel worker prod")
        wait_for(lambda: "Cancelling job" in ws.says(ws.bo, "cancel prod"), 30, "the one left to be cancelled")
    finally:
        held.unlink(missing_ok=True)

def test_the_live_card_keeps_to_the_call_budget_and_labels_each_services_output(app, repo):
    ws = app(SLS_TEST_DEPLOY_LINES="3000", SLS_TEST_DEPLOY_SLEEP="2")
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    before = len(ws.standin.calls)
    started = time.monotonic()
    ws.cy.click(card.first, "approve")
    card.becomes("✅", timeout=120)
    elapsed = time.monotonic() - started
    wait_for(lambda: "[billing] line" in _thread(ws, card), 30, "billing's output in the thread")
    calls = [m for _, m in ws.standin.calls[before:] if m in ("chat.update", "chat.postMessage")]
    assert len(calls) <= 40 * elapsed / 60 + 4, (len(calls), elapsed)  # 9,000 lines of output, 3 services
    text = _thread(ws, card)
    assert "[worker] line" in text and "[api] line" in text

def _thread(ws, card) -> str:
    return "\n".join(m["text"] for m in ws.standin.thread(CHANNEL, card.ts))

def test_the_plan_warns_when_a_target_removes_an_export_a_live_stack_still_imports(app, repo):
    ws = app()
    # api alone back to c1 (its template without the export) while worker stays on c3, importing it
    pending = ws.service.apps.request("prod", "by hand", Actor.in_slack("U-ANA", None),
                                      targets={"api": (repo.commits["c1"], "api-v1")})
    assert pending.app.warnings == [
        "api's target removes the export `api-prod-url`, which worker still import(s) after the rollback: "
        "CloudFormation will refuse that deploy.",
        "worker imports `api-prod-url`, which no service will export after the rollback."]
    assert [s.status for s in pending.app.steps] == ["roll", "untouched", "untouched"]

def test_with_on_failure_cancel_a_failing_service_stops_the_others_of_its_phase(app, repo, lam):
    ws = app(ROLLBACK_APP_ON_FAILURE="cancel", SLS_TEST_FAIL_SERVICE="billing", SLS_TEST_DEPLOY_SLEEP="2")
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    ws.cy.click(card.first, "approve")
    text = "\n".join(b.get("text", {}).get("text", "") for b in card.becomes("❌", timeout=90)["blocks"])
    assert "at the target: worker; failed: billing" in text and "cancelled: api" in text
    assert live(lam, "api") == code(repo, "api", "v2")  # stopped before its deploy went through

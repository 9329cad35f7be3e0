"""App rollbacks: every service of a monorepo back to one commit, dependents first.

Three services: api exports `api-prod-url` from c2 on, worker (deployed after api) imports it from c3
on, billing stands alone and changed last (c4). The fast deploy script refuses what CloudFormation
refuses between stacks (an export in use cannot be removed), so a wrong order fails the test.
"""

from __future__ import annotations

from bot.adapters.stack import code_sha256
from tests.support.app_fixtures import BUCKET, code, live
from tests.support.fast_service import hold_file
from tests.support.slack_session import all_text, header
from tests.support.waiting import wait_for


def test_a_commit_where_only_one_service_changed_moves_only_that_service(app, repo, lam):
    ws = app()
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c3'][:8]}")  # no service named: the whole app
    assert header(card.first) == f"Roll back the app in prod to {repo.commits['c3'][:7]}?"
    text = all_text(card.first)
    assert "*1 of 3 services move*" in text and "*billing*" in text
    assert "*api* left as it is: already at its target" in text and "*worker* left as it is" in text
    assert "approval needs one of U-CY, cy other than the requester" in text  # billing's approvers
    assert "not an approver" in ws.clicks(ws.bo, card.first, "approve")
    ws.cy.click(card.first, "approve")
    done = card.becomes("✅")
    assert "✅ billing" in all_text(done)
    assert live(lam, "billing") == code(repo, "billing", "v1")
    assert live(lam, "api") == code(repo, "api", "v2") and live(lam, "worker") == code(repo, "worker", "v2")


def test_both_services_go_back_in_order_dependents_first(app, repo, lam):
    ws = app()
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    text = all_text(card.first)
    assert "*3 of 3 services move*" in text
    assert "*Order* (dependents first): 1. worker → 2. api, billing" in text
    ws.cy.click(card.first, "approve")
    done = all_text(card.becomes("✅", timeout=90))
    assert "*Phase 1*\n✅ worker" in done and "*Phase 2*" in done
    parts = {p.service: p for p in ws.engine.store.jobs(limit=10) if p.app_id}
    assert parts["worker"].finished <= parts["api"].started  # the importer went first
    for svc in ("api", "worker", "billing"):
        assert live(lam, svc) == code(repo, svc, "v1")
    # history shows the app as one entry with its services
    history = ws.says(ws.ana, "history prod")
    assert "`the app in prod`" in history and "worker" not in history.split("`the app in prod`")[0]


def test_a_failure_in_the_second_phase_says_who_is_where_and_offers_the_way_back(app, repo, lam):
    ws = app(SLS_TEST_FAIL_SERVICE="billing")
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    ws.cy.click(card.first, "approve")
    stopped = card.becomes("❌", timeout=90)
    text = all_text(stopped)
    assert "✅ worker" in text and "✅ api" in text and "❌ billing" in text
    assert "*Where each service is:* at the target: api, worker; failed: billing" in text
    assert "failed: billing (deploy: `" in text and "exited with code 1" in text
    assert "Lambda runs" in text and "(build billing-v2, live before the job)" in text
    assert live(lam, "billing") == code(repo, "billing", "v2")  # unchanged
    # one button plans the reverse move of the services that finished
    n = ws.cards()
    assert ws.ana.click(stopped, "undo_app") == 200
    undo = ws.card(n)
    assert header(undo).startswith("Roll the finished services of job ") and "forward again in prod?" in header(undo)
    undo_text = all_text(undo)
    assert "*2 of 3 services move*" in undo_text and "*billing* left as it is" in undo_text
    assert "1. api → 2. worker" in undo_text  # forward again: producers first
    ws.bo.click(undo, "approve")
    wait_for(lambda: live(lam, "worker") == code(repo, "worker", "v2"), 90, "worker back on v2")
    assert live(lam, "api") == code(repo, "api", "v2")


def test_previous_undoes_the_newest_deploy_only(app, repo, lam):
    ws = app()
    card = ws.posts_card(ws.ana, "prod previous")
    assert header(card.first) == "Undo the newest deploy of prod?"
    text = all_text(card.first)
    assert "*1 of 3 services move*" in text and "not part of the newest deploy" in text
    ws.cy.click(card.first, "approve")
    card.becomes("✅")
    assert live(lam, "billing") == code(repo, "billing", "v1") and live(lam, "api") == code(repo, "api", "v2")


def test_a_busy_service_refuses_the_whole_plan(app, repo, lam, tmp_path):
    hold = hold_file("hold")
    hold.touch()
    ws = app(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    single = ws.posts_card(ws.ana, "worker prod previous")
    ws.bo.click(single.first, "approve")
    wait_for(lambda: ws.engine.store.locks(), 30, "worker's job to hold its lock")
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    assert "worker (job" in all_text(card.first) and "is running now" in all_text(card.first)
    said = ws.clicks(ws.cy, card.first, "approve")
    assert "worker on prod is busy: job" in said and "takes every service's lock or none" in said
    locks = ws.engine.store.locks()
    assert [lk.service for lk in locks] == ["worker"]  # api's and billing's were not taken
    hold.unlink()
    single.becomes("✅")
    assert live(lam, "api") == code(repo, "api", "v2") and live(lam, "billing") == code(repo, "billing", "v2")


def test_each_service_of_an_app_rollback_settles_under_watch_on_the_apps_card(app, repo):
    ws = app(ROLLBACK_WATCH_POLL="1", ROLLBACK_SETTLE="2")
    card = ws.posts_card(ws.ana, "prod previous")  # billing only: the newest deploy
    ws.cy.click(card.first, "approve")
    card.becomes("✅")
    wait_for(lambda: "👀" in all_text(card.now), 30, "the settle verdict on the app's card")
    assert "👀 billing: alarms OK for 2 s after the rollback" in all_text(card.now)


def test_an_app_rollback_takes_every_services_lease_or_none(app, repo, lam, s3):
    """Another replica (or a terminal elsewhere) holds billing's lease: nothing of the app moves, and no
    other service's lease is left behind."""
    from bot.adapters.artifacts import make_s3_client
    from bot.adapters.lease import LeaseStore

    other = LeaseStore(make_s3_client(2), "rollback-artifacts", "rollback/", "billing")
    held = other.acquire("prod", 12, "U-DEE", "U-DEE", "cli", 4242)
    ws = app()
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    said = ws.clicks(ws.cy, card.first, "approve")
    assert "billing on prod is busy: a rollback holds it (job 12 approved by U-DEE" in said
    assert "takes every service's lock or none" in said
    assert ws.engine.store.locks() == []  # nor any lock on this machine
    for svc in ("api", "worker"):
        lock = f"rollback/{svc}/prod/lock.json"
        assert "Contents" not in s3.list_objects_v2(Bucket="rollback-artifacts", Prefix=lock)
        assert live(lam, svc) == code(repo, svc, "v2")
    other.release(held)


def test_a_service_ci_deployed_during_an_earlier_phase_is_not_rolled_back_over(app, repo, lam, tmp_path):
    """Phase 1 (worker) is deploying when CI deploys billing v3; phase 2 plans api and billing again,
    finds billing's plan changed, deploys neither, and the card says who is where."""
    from bot.adapters.artifacts import ArtifactStore, make_s3_client
    from tests.support.deploy_script import deploy_package
    from tests.support.fast_service import fast_package

    hold = hold_file("phase-hold")
    hold.touch()
    ws = app(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    ws.cy.click(card.first, "approve")
    wait_for(lambda: any(j.service == "worker" and j.state == "running" for j in ws.engine.store.jobs(limit=10)),
             60, "phase 1 to start")
    v3 = fast_package(tmp_path / "pkg-billing-v3", "billing v3", service="billing")
    ArtifactStore(make_s3_client(2), BUCKET, "billing", "rollback/").publish(
        "prod", repo.commits["c4"], v3, build_id="billing-v3", deployed=True, by="ci")
    deploy_package(v3)  # CI went ahead (it ignored check-freeze, which said a rollback holds billing)
    hold.unlink()
    done = all_text(card.becomes("❌", timeout=90))
    assert "✅ worker" in done
    assert "billing" in done and "not deployed: its plan changed since the approval" in done
    assert "unchanged (not started): api" in done
    assert live(lam, "worker") == code(repo, "worker", "v1")
    assert live(lam, "api") == code(repo, "api", "v2")  # phase 2 never started
    assert live(lam, "billing") == code_sha256(v3 / "billing.zip")  # CI's deploy stands
    assert ws.engine.store.locks() == []

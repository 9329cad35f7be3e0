"""App rollbacks: every service of a monorepo back to one commit, dependents first.

Three services: api exports `api-prod-url` from c2 on, worker (deployed after api) imports it from c3
on, billing stands alone and changed last (c4). The fast deploy script refuses what CloudFormation
refuses between stacks (an export in use cannot be removed), so a wrong order fails the test.
"""

from __future__ import annotations

import time

import git
import pytest

from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.stack import code_sha256
from bot.core.config import load_settings
from tests.conftest import BUCKET
from tests.support.deploy_script import deploy_package
from tests.support.fast_service import DEPLOY_COMMAND, fast_package, handler
from tests.support.gitrepo import ServiceRepo
from tests.support.serverless_fixture import sls_env
from tests.support.slack_session import CHANNEL, all_text, header, workspaces
from tests.support.waiting import wait_for

EXPORT = "api-prod-url"
CONFIG = """
[services.api]
dir = "services/api"

[services.worker]
dir = "services/worker"
after = ["api"]

[services.billing]
dir = "services/billing"

[stages.prod]
approver_must_differ = true

[stages.prod.services.billing]
approvers = ["U-CY"]   # billing's team: an app rollback that moves billing needs one of them
"""
# (commit message, service, version, exports, imports) per commit; each commit changes one service
# after the first
CHANGES = (
    ("c1", (("api", "v1", (), ()), ("worker", "v1", (), ()), ("billing", "v1", (), ()))),
    ("c2", (("api", "v2", (EXPORT,), ()),)),
    ("c3", (("worker", "v2", (), (EXPORT,)),)),
    ("c4", (("billing", "v2", (), ()),)),
)


def yml(name: str) -> str:
    return f"service: {name}\nprovider:\n  name: aws\nfunctions:\n  hello:\n    handler: handler.hello\n"


class Repo:
    def __init__(self, root):
        self.work = ServiceRepo(root / "work")
        self.commits: dict[str, str] = {}
        self.packages: dict[tuple[str, str], object] = {}
        for name, changes in CHANGES:
            files = {}
            for svc, version, exports, imports in changes:
                files[f"services/{svc}/serverless.yml"] = yml(svc)
                files[f"services/{svc}/handler.js"] = handler(f"{svc} {version}")
                self.packages[(svc, version)] = fast_package(root / f"pkg-{svc}-{version}", f"{svc} {version}",
                                                             service=svc, exports=exports, imports=imports)
            self.commits[name] = self.work.commit(f"{name}: " + ", ".join(f"{c[0]} {c[1]}" for c in changes), files)
        self.origin = root / "origin.git"
        git.Repo.clone_from(self.work.path, self.origin, bare=True).close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return Repo(tmp_path_factory.mktemp("app-repo"))


@pytest.fixture
def app_env(aws_env, s3, repo, tmp_path):
    """CI published every build and deployed each commit's changed services in order: live are api v2 (c2),
    worker v2 (c3) and billing v2 (c4)."""
    for name, changes in CHANGES:
        for svc, version, _, _ in changes:
            store = ArtifactStore(make_s3_client(2), BUCKET, svc, "rollback/")
            store.publish("prod", repo.commits[name], repo.packages[(svc, version)], build_id=f"{svc}-{version}",
                          author="Ana Dev", message=name, deployed=True, by="ci")
            deploy_package(repo.packages[(svc, version)])
    (tmp_path / "rollback.toml").write_text(CONFIG)
    return {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_PREFIX": "rollback/",
            "ROLLBACK_REPO": str(repo.origin), "ROLLBACK_CONFIG": str(tmp_path / "rollback.toml"),
            "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "ROLLBACK_DATA_DIR": str(tmp_path / "bot")}


@pytest.fixture
def app(app_env, tmp_path):
    env = app_env

    def make(**overrides):
        return load_settings({**env, **overrides}, needs=["engine"])

    yield from workspaces(make, tmp_path)


def code(repo, svc: str, version: str) -> str:
    return code_sha256(repo.packages[(svc, version)] / f"{svc}.zip")


def live(lam, svc: str) -> str:
    return lam.get_function(FunctionName=f"{svc}-prod-hello")["Configuration"]["CodeSha256"]


@pytest.fixture
def lam(aws_env):
    import boto3

    return boto3.client("lambda")


def test_a_commit_where_only_one_service_changed_moves_only_that_service(app, repo, lam):
    ws = app()
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c3'][:8]}")  # no service named: the whole app
    assert header(card.first) == f"Roll back the app in prod to {repo.commits['c3'][:7]}?"
    text = all_text(card.first)
    assert "*1 of 3 services move*" in text and "*billing*" in text
    assert "*api* left as it is: already at its target" in text and "*worker* left as it is" in text
    assert "approval needs one of U-CY other than the requester" in text  # billing's approvers
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
    parts = {p["service"]: p for p in ws.engine.store.jobs(limit=10) if p.get("app_id")}
    assert parts["worker"]["finished"] <= parts["api"]["started"]  # the importer went first
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
    hold = tmp_path / "hold"
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
    assert [lk["service"] for lk in locks] == ["worker"]  # api's and billing's were not taken
    hold.unlink()
    single.becomes("✅")
    assert live(lam, "api") == code(repo, "api", "v2") and live(lam, "billing") == code(repo, "billing", "v2")


def test_the_terminal_rolls_the_app_back_and_history_shows_it_as_one_entry(app_env, repo, lam):
    import json
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bot", *args], env=app_env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    refused = cli("rollback", "prod", repo.commits["c1"][:8])  # no terminal to confirm with
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert "Order (dependents first): 1. worker → 2. api, billing" in refused.stdout
    refused = cli("rollback", "prod", repo.commits["c1"][:8], "--yes", "--by", "U-ANA")
    assert refused.returncode == 1 and "not an approver for `billing` in `prod`" in refused.stderr  # its team
    done = cli("rollback", "prod", repo.commits["c1"][:8], "--yes", "--by", "U-CY")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[worker] succeeded" in done.stdout and "every service runs its target" in done.stdout
    assert all(live(lam, svc) == code(repo, svc, "v1") for svc in ("api", "worker", "billing"))
    history = cli("history", "prod").stdout
    assert "the app in prod" in history and "      worker: succeeded" in history
    entries = json.loads(cli("history", "prod", "--json").stdout)
    assert len(entries) == 1 and sorted(p["to"]["build"] for p in entries[0]["services"]) == [
        "api-v1", "billing-v1", "worker-v1"]


def test_the_live_card_keeps_to_the_call_budget_and_labels_each_services_output(app, repo):
    ws = app(SLS_TEST_DEPLOY_LINES="3000", SLS_TEST_DEPLOY_SLEEP="3")
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

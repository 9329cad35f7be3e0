"""Deploys on AWS CodeBuild in the stage's account (executor = "codebuild"): the calls the bot makes, checked
against moto's CodeBuild (which runs nothing), and whole rollbacks run by the CodeBuild stand-in of
bot/playground/codebuild.py, which runs the buildspec with the real job runner and logs to moto's
CloudWatch Logs."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import boto3
import pytest

from bot.adapters.codebuild import SPEC_VARIABLE, CodeBuild
from bot.adapters.store import Store
from bot.core.catalog import Catalog
from bot.core.executor import Executor, ExecutorKind
from bot.core.job_protocol import JobSpec
from bot.playground.codebuild import CodeBuildStandIn
from bot.playground.slack import SlackStandIn
from tests.conftest import fast_code, live_code
from tests.support.fast_service import SERVICE, hold_file
from tests.support.replicas import Replica, bot_env, cards, new_cards
from tests.support.slack_session import CHANNEL, Card, all_text
from tests.support.waiting import wait_for

PROJECT = "rollback-prod"
ROLE = "arn:aws:iam::123456789012:role/rollback-build"
POLICY = f"""
[stages.prod]
executor = "codebuild"
codebuild_project = "{PROJECT}"
"""
BUILDSPEC = f"""version: 0.2
phases:
  install:
    commands:
      - echo installing rollback-bot
  build:
    commands:
      - {sys.executable} -m bot.engine.job_process --codebuild
"""


@pytest.fixture
def codebuild(aws_env, monkeypatch, fast_service):
    """The stand-in, and the team's project in it: the repository as its source, the buildspec of
    docs/codebuild.md, a service role of its own."""
    standin = CodeBuildStandIn(aws_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL_CODEBUILD", standin.url)

    def create(location=None, **env: str) -> None:
        boto3.client("codebuild", endpoint_url=standin.url).create_project(
            name=PROJECT, source={"type": "GITHUB", "location": str(location or fast_service.origin),
                                  "buildspec": BUILDSPEC},
            artifacts={"type": "NO_ARTIFACTS"}, serviceRole=ROLE,
            environment={"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
                         "computeType": "BUILD_GENERAL1_SMALL", "environmentVariables": [
                             {"name": k, "value": v, "type": "PLAINTEXT"} for k, v in
                             {"SLS_TEST_WHOAMI": "1", **env}.items()]})

    standin.create = create
    yield standin
    standin.stop()


def ends_as(card, prefix: str, ws, standin, timeout: float = 90) -> str:
    """The card's text once its header starts with ``prefix``; on a timeout, what the job and the builds were."""
    try:
        return all_text(card.becomes(prefix, timeout=timeout))
    except AssertionError as exc:
        jobs = [(j.id, j.state, j.reason, j.build_ref) for j in ws.engine.store.jobs(stage="prod")]
        builds = {b: (x.status, x.phase) for b, x in standin.builds.items()}
        raise AssertionError(f"{exc}; jobs {jobs}; builds {builds}; calls {[op for op, _ in standin.calls]}; "
                             f"slack {ws.standin.calls[-8:]}") from None


def started_builds(standin) -> list[dict]:
    return [r for op, r in standin.calls if op == "StartBuild"]


def test_the_executor_is_read_from_the_stage_or_the_service_table_and_bad_values_are_refused():
    doc = {"services": {"api": {}, "web": {}}, "stages": {"prod": {
        "executor": "codebuild", "codebuild_project": "rb-prod", "services": {"web": {"executor": "local"}}}}}
    catalog, problems = Catalog.parse(doc, "rollback.toml")
    assert problems == []
    assert catalog.executor_for("prod", "api") == Executor(ExecutorKind.CODEBUILD, "rb-prod")
    assert catalog.executor_for("prod", "web").kind is ExecutorKind.LOCAL
    assert catalog.executor_for("dev", "api").kind is ExecutorKind.LOCAL
    for table, says in [({"executor": "codebuild"}, 'needs codebuild_project = "<the project'),
                        ({"executor": "lambda"}, 'executor must be "local" or "codebuild"'),
                        ({"executor": "codebuild", "codebuild_project": "bad name!"}, "CodeBuild project's name"),
                        ({"codebuild_project": "rb"}, 'means nothing with executor = "local"')]:
        _, problems = Catalog.parse({"stages": {"prod": table}}, "rollback.toml", default_service="api")
        assert any(says in p and "[stages.prod]" in p for p in problems), problems


def test_the_calls_the_bot_makes_are_ones_moto_codebuild_takes(aws_env, fast_prod, fast_service, monkeypatch):
    """moto runs nothing, but it checks the calls: the project, the commit, the spec as an override, a token."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_CODEBUILD", raising=False)
    moto_cb = boto3.client("codebuild")
    moto_cb.create_project(name=PROJECT, source={"type": "GITHUB", "location": "https://github.com/team/app",
                                                  "buildspec": BUILDSPEC},
                           artifacts={"type": "NO_ARTIFACTS"}, serviceRole=ROLE,
                           environment={"type": "LINUX_CONTAINER", "image": "x", "computeType": "BUILD_GENERAL1_SMALL"})
    cb = CodeBuild(aws_env)
    sent: list[dict] = []
    cb.events.register("provide-client-params.codebuild.StartBuild", lambda params, **kw: sent.append(dict(params)))
    spec = JobSpec.from_json(json.dumps({
        "job_id": 7, "service": SERVICE, "stage": "prod", "target": {
            "commit": fast_service.commits["v1"], "build_id": "b-v1", "key": "k", "sha256": "s", "size": 1},
        "mirror": ".", "service_dir": ".", "workdir": ".", "plugin_cache": ".", "plugin_cache_max": 1,
        "step_timeout": 60, "env": {}, "package_bucket": "bucket", "version": 1}))
    build = cb.start(PROJECT, spec.target.commit, {SPEC_VARIABLE: spec.to_json()}, token="job-7-token")
    assert build.project == PROJECT and build.id in moto_cb.list_builds_for_project(projectName=PROJECT)["ids"]
    assert sent[0]["sourceVersion"] == fast_service.commits["v1"] and sent[0]["idempotencyToken"] == "job-7-token"
    [override] = sent[0]["environmentVariablesOverride"]
    assert override["name"] == SPEC_VARIABLE and JobSpec.from_json(override["value"]).job_id == 7
    assert cb.get(build.id).status.done  # moto's builds "succeed" at once: why the stand-in exists
    cb.stop(build.id)
    with pytest.raises(Exception, match="Project cannot be found"):
        cb.start("no-such-project", spec.target.commit, {}, token="t")


def test_a_rollback_on_codebuild_reads_like_a_local_one_and_runs_with_the_projects_role(
        codebuild, fast_prod, fast_workspace, fast_service, aws_env):
    codebuild.create()
    ws = fast_workspace(POLICY, AWS_ENDPOINT_URL_CODEBUILD=codebuild.url)
    card = ws.posts_card(ws.ana, "prod previous")
    assert f"deploys on CodeBuild project {PROJECT}" in all_text(card.first)
    assert "unsandboxed" not in all_text(card.first).lower()
    ws.bo.click(card.first, "approve")
    done = ends_as(card, "✅", ws, codebuild)
    for step in ("✅ Restore artifact", "✅ Check out source", "➖ Install plugins", "✅ Deploy",
                 "✅ Verify Lambda code"):
        assert step in done, done  # the same checklist as a job on the bot's host
    assert "AWS: deploys on CodeBuild project rollback-prod" in done
    assert live_code() == fast_code(fast_service, "v1")
    job = ws.engine.store.jobs(stage="prod")[0]
    assert job.state == "succeeded" and job.build_ref.startswith(f"{PROJECT}:")
    # the build: the commit, one start, the spec and nothing else from the bot; the deploy ran as the project's role
    [start] = started_builds(codebuild)
    assert start["sourceVersion"] == fast_service.commits["v1"] and len(start["idempotencyToken"]) == 64
    assert [v["name"] for v in start["environmentVariablesOverride"]] == [SPEC_VARIABLE]
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(start)
    thread = "\n".join(m["text"] for m in ws.standin.messages[CHANNEL] if m.get("thread_ts") == card.ts)
    assert f"CodeBuild build {job.build_ref} started" in thread
    assert "deploying as arn:aws:sts::123456789012:assumed-role/rollback-build/AWSCodeBuild-" in thread
    assert "Service deployed to stage prod" in thread
    assert codebuild.builds[job.build_ref].status == "SUCCEEDED"


def test_a_start_retried_with_the_jobs_token_never_starts_two_builds(codebuild, aws_env, fast_service):
    codebuild.create()
    cb = CodeBuild({**aws_env, "AWS_ENDPOINT_URL_CODEBUILD": codebuild.url})
    commit = fast_service.commits["v1"]
    first = cb.start(PROJECT, commit, {"X": "1"}, token="job-9-token")
    again = cb.start(PROJECT, commit, {"X": "1"}, token="job-9-token")  # boto3 retried, or the bot restarted
    assert again.id == first.id and len(codebuild.builds) == 1
    with pytest.raises(Exception, match="IdempotentParameterMismatch"):
        cb.start(PROJECT, commit, {"X": "2"}, token="job-9-token")
    cb.stop(first.id)


def test_an_app_rollback_on_codebuild_runs_each_services_deploy_as_a_build_of_its_own(
        codebuild, app, repo, lam, tmp_path):
    from tests.support.app_fixtures import CONFIG, code, live

    codebuild.create(location=repo.origin)
    config = tmp_path / "codebuild.toml"
    config.write_text(CONFIG.replace("[stages.prod]\n", f'[stages.prod]\nexecutor = "codebuild"\n'
                                                         f'codebuild_project = "{PROJECT}"\n', 1))
    ws = app(ROLLBACK_CONFIG=str(config), AWS_ENDPOINT_URL_CODEBUILD=codebuild.url)
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    ws.cy.click(card.first, "approve")
    done = all_text(card.becomes("✅", timeout=120))
    assert "*Phase 1*\n✅ worker" in done
    starts = started_builds(codebuild)
    services = sorted(JobSpec.from_json(s["environmentVariablesOverride"][0]["value"]).service for s in starts)
    assert services == ["api", "billing", "worker"] and {s["sourceVersion"] for s in starts} == {repo.commits["c1"]}
    assert all(b.status == "SUCCEEDED" for b in codebuild.builds.values())
    for svc in ("api", "worker", "billing"):
        assert live(lam, svc) == code(repo, svc, "v1")


def test_a_project_that_does_not_exist_fails_the_job_before_anything_runs_and_says_what_to_check(
        codebuild, fast_prod, fast_workspace, fast_service):
    ws = fast_workspace(POLICY, AWS_ENDPOINT_URL_CODEBUILD=codebuild.url)  # no project created
    card = ws.posts_card(ws.ana, "prod previous")
    ws.bo.click(card.first, "approve")
    text = ends_as(card, "❌", ws, codebuild)
    assert "Project cannot be found" in text and "codebuild:StartBuild" in text and "Nothing was deployed" in text
    assert live_code() == fast_code(fast_service, "v2")
    assert ws.engine.leases.current("prod") is None and ws.engine.store.lock_of(fast_prod.jobs.key("prod")) is None


def test_a_deploy_that_forges_the_runners_success_in_the_build_log_still_fails(
        codebuild, fast_prod, fast_workspace, fast_service):
    """The target's code writes the runner's last line itself, then its deploy fails: CodeBuild has the last word."""
    codebuild.create(SLS_TEST_FORGE_END="1")
    ws = fast_workspace(POLICY, AWS_ENDPOINT_URL_CODEBUILD=codebuild.url)
    card = ws.posts_card(ws.ana, "prod previous")
    ws.bo.click(card.first, "approve")
    text = ends_as(card, "❌", ws, codebuild)
    assert "the job's log says it succeeded but CodeBuild says FAILED" in text
    job = ws.engine.store.jobs(stage="prod")[0]
    assert job.state == "failed" and job.recorded is None
    assert ws.engine.artifacts.read_index("prod").live.build_id == "b-v2"  # nothing recorded, CI not frozen
    assert live_code() == fast_code(fast_service, "v2")


def test_a_from_env_variable_cannot_reach_a_build_and_the_job_says_so_before_anything_starts(
        codebuild, fast_prod, fast_workspace, fast_service, monkeypatch):
    codebuild.create()
    ws = fast_workspace(POLICY + '[stages.prod.env]\nAPI_KEY = { from_env = "BOT_API_KEY" }\n',
                        AWS_ENDPOINT_URL_CODEBUILD=codebuild.url, BOT_API_KEY="s3cr3t-value")
    card = ws.posts_card(ws.ana, "prod previous")
    ws.bo.click(card.first, "approve")
    text = ends_as(card, "❌", ws, codebuild)
    assert "a from_env deploy-time variable cannot reach a CodeBuild build" in text and "ssm or secret" in text
    assert started_builds(codebuild) == [] and live_code() == fast_code(fast_service, "v2")


def test_cancel_stops_the_build_and_nothing_is_deployed(codebuild, fast_prod, fast_workspace, fast_service):
    hold = hold_file("codebuild-cancel")
    hold.touch()
    codebuild.create(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    try:
        ws = fast_workspace(POLICY, AWS_ENDPOINT_URL_CODEBUILD=codebuild.url)
        card = ws.posts_card(ws.ana, "prod previous")
        ws.bo.click(card.first, "approve")
        job_id = ws.engine.store.jobs(stage="prod")[0].id
        build_id = wait_for(lambda: next((b for b in [ws.engine.store.job(job_id).build_ref]
                                          if b.startswith(f"{PROJECT}:")), None), 30, "the build")
        wait_for(lambda: any(e["step"] == "deploy" for e in ws.engine.store.events(job_id)) or None, 60,
                 "the deploy step to start")
        ws.ana.click(card.now, "cancel_job")  # the Cancel button on the live card
        assert codebuild.wait(build_id, 60) == "STOPPED"
        text = all_text(card.becomes("🛑", timeout=60))
    finally:
        hold.unlink(missing_ok=True)
    assert live_code() == fast_code(fast_service, "v2")
    assert ws.engine.store.job(job_id).state == "cancelled" and "Cancelled by <@U-ANA>" in text
    assert [op for op, _ in codebuild.calls].count("StopBuild") == 1


def killed_mid_build(codebuild, fast_prod, fast_workspace, fast_service, aws_env, tmp_path, until):
    """A `rollback-bot serve` process approves a CodeBuild rollback and is SIGKILLed once ``until(job)`` holds
    for its job record; the bot is started again with its data folder. Returns (card, the bot, the build id)."""
    hold = hold_file("codebuild-reattach")
    hold.touch()
    codebuild.create(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    (tmp_path / "policy.toml").write_text(POLICY)
    data = tmp_path / "bot-data"  # the data folder the bot below starts again with
    standin = SlackStandIn()
    standin.people.update({"U-ANA": "Ana", "U-BO": "Bo"})
    first = Replica(bot_env(aws_env, fast_service.origin, data, standin, ROLLBACK_CONFIG=str(tmp_path / "policy.toml"),
                            AWS_ENDPOINT_URL_CODEBUILD=codebuild.url, ROLLBACK_SANDBOX="auto"), standin)
    try:
        n = cards(standin)
        assert first.ana.command("prod previous") == 200
        card = Card(SimpleNamespace(standin=standin), new_cards(standin, n))
        assert first.bo.click(card.first, "approve") == 200
        store = Store(data / "rollback-bot.sqlite")
        wait_for(lambda: (store.jobs(stage="prod") or [None])[0] and until(store.jobs(stage="prod")[0]) or None, 60,
                 "the moment to kill the bot")
        build_id = wait_for(lambda: next(iter(codebuild.builds), None), 60, "the build to start")
        first.kill()  # the bot's host goes away; the build goes on in CodeBuild
        assert codebuild.builds[build_id].ended is None
        codebuild.start_delay = 0.0
        again = fast_workspace(POLICY, ROLLBACK_DATA_DIR=str(data), AWS_ENDPOINT_URL_CODEBUILD=codebuild.url,
                               SLACK_API_URL=standin.api_url)
        hold.unlink()
        done = ends_as(card, "✅", again, codebuild)
    finally:
        hold.unlink(missing_ok=True)
        first.kill()
    assert "Verify" in done and live_code() == fast_code(fast_service, "v1")
    job = again.engine.store.jobs(stage="prod")[0]
    assert job.state == "succeeded" and job.build_ref == build_id, job.reason
    assert len(codebuild.builds) == 1  # followed again, never a second build
    assert not [m for ch in standin.messages for m in standin.messages[ch] if "interrupted" in m["text"]]
    assert again.engine.leases.current("prod") is None
    standin.stop()
    return job


def test_a_bot_killed_mid_build_reattaches_when_it_starts_again_and_finishes_the_card(
        codebuild, fast_prod, fast_workspace, fast_service, aws_env, tmp_path):
    killed_mid_build(codebuild, fast_prod, fast_workspace, fast_service, aws_env, tmp_path,
                     until=lambda job: job.build_ref.startswith(f"{PROJECT}:"))


def test_a_bot_killed_before_startbuild_answered_asks_again_with_its_token_and_gets_the_same_build(
        codebuild, fast_prod, fast_workspace, fast_service, aws_env, tmp_path):
    codebuild.start_delay = 5.0  # the build has started; its id has not reached the bot yet
    killed_mid_build(codebuild, fast_prod, fast_workspace, fast_service, aws_env, tmp_path,
                     until=lambda job: job.build_ref.startswith("starting:") and codebuild.builds)
    assert len(started_builds(codebuild)) == 2  # the same start, sent again with the same token

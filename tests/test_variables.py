"""Deploy-time variables: `${env:…}` in serverless.yml resolved from a literal, the bot host's environment,
SSM and Secrets Manager in the stage's account, checked at plan time, never stored or shown. The real
engine and job runner against moto's SSM and Secrets Manager, with the fast tier's deploy command."""

from __future__ import annotations

import hashlib
import json

import boto3
import git
import pytest

from bot.core.errors import UserError
from tests.support.fast_service import DEPLOY_COMMAND, deploy, fast_package, handler
from tests.support.gitrepo import ServiceRepo

YML = ("service: hello-service\nprovider:\n  name: aws\n  runtime: nodejs20.x\n  environment:\n"
       "    EMAIL_SERVICE_API_KEY: ${env:EMAIL_SERVICE_API_KEY}\n    DB_PASSWORD: ${env:DB_PASSWORD}\n"
       "    STAGE_LABEL: ${env:STAGE_LABEL}\n    FROM_HOST: ${env:FROM_HOST}\n"
       "    OPTIONAL: ${env:NOT_NEEDED, 'a default'}\nfunctions:\n  hello:\n    handler: handler.hello\n")
POLICY = """
[stages.prod]
requesters = ["U-ANA"]
approvers = ["U-BO"]

[stages.prod.env]
STAGE_LABEL = "production"
EMAIL_SERVICE_API_KEY = { ssm = "/prod/email/api-key" }
DB_PASSWORD = { secret = "prod/db", key = "password" }
FROM_HOST = { from_env = "BOT_HOST_TOKEN" }
"""
SSM_VALUE = "email-key-from-ssm-7f3a9c"
SECRET_VALUE = "db-password-from-secrets-manager-41d2"
HOST_VALUE = "host-token-from-the-bots-env-88e1"
NAMES = "EMAIL_SERVICE_API_KEY,DB_PASSWORD,STAGE_LABEL,FROM_HOST"


@pytest.fixture
def service(tmp_path, aws_env, s3):
    work = ServiceRepo(tmp_path / "svc" / "work")
    commits = {"v1": work.commit("Hello v1", {"serverless.yml": YML, "handler.js": handler("v1")})}
    commits["v2"] = work.commit("Make hello say v2", {"handler.js": handler("v2")})
    commits["v3"] = work.commit("Use a new key", {"serverless.yml": YML + "custom:\n  k: ${env:NEW_KEY}\n"})
    origin = tmp_path / "svc" / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    packages = {n: fast_package(tmp_path / "svc" / f"pkg-{n}", n) for n in commits}
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return origin, commits, packages, policy


@pytest.fixture
def stopping():
    """Engines a test made, shut down when it ends (their job runners and chores)."""
    engines: list = []
    yield engines
    for engine in engines:
        engine.jobs.shutdown()


def engine_for(service, aws_env, tmp_path, stopping, **env):
    from tests.conftest import engine_factory

    origin, commits, packages, policy = service
    make, engines = engine_factory(aws_env, tmp_path, origin, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND,
                                   ROLLBACK_CONFIG=str(policy), ROLLBACK_SANDBOX="auto", SLS_TEST_EXPECT_ENV=NAMES,
                                   BOT_HOST_TOKEN=HOST_VALUE, **env)
    engine = make()
    for name in ("v1", "v2", "v3"):
        engine.artifacts.publish("prod", commits[name], packages[name], build_id=f"b-{name}")
    deploy(packages["v2"])
    engine.artifacts.mark_deployed("prod", commits["v2"], "b-v2", by="ci")
    stopping.extend(engines)
    return engine


def sources(aws_env, ssm: bool = True, secret: bool = True) -> None:
    if ssm:
        boto3.client("ssm").put_parameter(Name="/prod/email/api-key", Value=SSM_VALUE, Type="SecureString")
    if secret:
        boto3.client("secretsmanager").create_secret(Name="prod/db", SecretString=json.dumps(
            {"username": "app", "password": SECRET_VALUE}))


def test_variables_reach_the_deploy_from_each_source_and_nowhere_else(service, aws_env, tmp_path, stopping):
    sources(aws_env)
    engine = engine_for(service, aws_env, tmp_path, stopping)
    plan = engine.plan("prod", "b-v1")
    job = engine.jobs.wait(engine.jobs.start(plan, "U-ANA", "U-BO"), timeout=120)
    assert job.state == "succeeded", job.reason
    output = "\n".join(engine.store.output(job.id))
    for name, value in (("EMAIL_SERVICE_API_KEY", SSM_VALUE), ("DB_PASSWORD", SECRET_VALUE),
                        ("FROM_HOST", HOST_VALUE), ("STAGE_LABEL", "production")):
        digest = hashlib.sha256(value.encode()).hexdigest()
        assert f"sha256={digest}" in output, f"the deploy did not get {name}"  # the right value arrived
    assert "STAGE_LABEL=production" in output  # a literal is not secret
    assert "EMAIL_SERVICE_API_KEY=*** " in output and "DB_PASSWORD=*** " in output and "FROM_HOST=*** " in output
    # the values are in no row, no log file, no job file
    stored = json.dumps([list(r.values()) for t in ("jobs", "events", "output", "audit")
                         for r in engine.store.db[t].rows], default=str)
    log = engine.jobs.log_path(job.id).read_text()
    for secret in (SSM_VALUE, SECRET_VALUE, HOST_VALUE):
        assert secret not in stored and secret not in log


def test_a_variable_with_no_source_is_refused_at_plan_time(service, aws_env, tmp_path, stopping):
    sources(aws_env)
    engine = engine_for(service, aws_env, tmp_path, stopping)
    with pytest.raises(UserError) as refused:
        engine.plan("prod", "b-v3")
    commit = service[1]["v3"][:7]
    assert str(refused.value) == (
        f"serverless.yml at `{commit}` uses `${{env:NEW_KEY}}`; add it under `[stages.prod.env]` in "
        "ROLLBACK_CONFIG (a literal, from_env, ssm or secret). Nothing was deployed.")
    assert engine.store.jobs(limit=5) == []


def test_a_source_that_cannot_be_read_is_refused_at_plan_time(service, aws_env, tmp_path, stopping):
    sources(aws_env, ssm=False)  # the parameter was never created in the stage's account
    engine = engine_for(service, aws_env, tmp_path, stopping)
    with pytest.raises(UserError, match=r"EMAIL_SERVICE_API_KEY comes from SSM parameter /prod/email/api-key, "
                                        r"which does not exist in stage `prod`'s account\..*Nothing was deployed"):
        engine.plan("prod", "b-v1")
    sources(aws_env, ssm=True, secret=False)
    boto3.client("secretsmanager").delete_secret(SecretId="prod/db", ForceDeleteWithoutRecovery=True)
    engine = engine_for(service, aws_env, tmp_path / "again", stopping)
    with pytest.raises(UserError, match=r"DB_PASSWORD comes from secret prod/db \(key password\), which does "
                                        "not exist"):
        engine.plan("prod", "b-v1")


def test_a_host_variable_that_is_not_set_is_refused_at_plan_time(service, aws_env, tmp_path):
    sources(aws_env)
    from tests.conftest import engine_factory

    origin, commits, packages, policy = service
    make, engines = engine_factory(aws_env, tmp_path, origin, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND,
                                   ROLLBACK_CONFIG=str(policy), ROLLBACK_SANDBOX="auto")
    try:
        engine = make()
        for name in ("v1", "v2"):
            engine.artifacts.publish("prod", commits[name], packages[name], build_id=f"b-{name}")
        engine.artifacts.mark_deployed("prod", commits["v2"], "b-v2", by="ci")
        with pytest.raises(UserError, match=r"takes \$BOT_HOST_TOKEN from the bot host's environment, but it is "
                                            "not set where the bot runs"):
            engine.plan("prod", "b-v1")
    finally:
        for e in engines:
            e.jobs.shutdown()


def test_a_malformed_env_table_stops_start_up_with_where_it_is(tmp_path):
    from bot.core.config import ConfigError, load_settings

    policy = tmp_path / "policy.toml"
    policy.write_text('[stages.prod]\napprovers = ["U-BO"]\n\n[stages.prod.env]\nBAD = { ssm = "/x", secret = "y" }\n'
                      '"not-a-name" = "v"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings({"ROLLBACK_BUCKET": "b-bucket", "ROLLBACK_SERVICE": "hello-service", "ROLLBACK_REPO": "/r",
                       "ROLLBACK_CONFIG": str(policy)}, needs=["engine"])
    text = str(refused.value)
    assert "stages.prod.env.BAD: give a literal string, or exactly one of from_env, ssm, secret" in text
    assert "stages.prod.env.not-a-name: not an environment variable name" in text


def test_a_stage_in_its_own_account_reads_its_own_parameter(service, aws_env, tmp_path, monkeypatch, stopping):
    """With a role for prod, the parameter is read in prod's account with the job's assumed role: a parameter of
    the same name in the bot's own account is not the one the deploy gets."""
    role = "arn:aws:iam::111111111111:role/rollback-deployer"
    creds = boto3.client("sts").assume_role(RoleArn=role, RoleSessionName="setup")["Credentials"]
    prod = {"aws_access_key_id": creds["AccessKeyId"], "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"], "region_name": "us-east-1"}
    boto3.client("ssm", **prod).put_parameter(Name="/prod/email/api-key", Value=SSM_VALUE, Type="SecureString")
    boto3.client("secretsmanager", **prod).create_secret(Name="prod/db", SecretString=json.dumps(
        {"password": SECRET_VALUE}))
    boto3.client("ssm").put_parameter(Name="/prod/email/api-key", Value="the-bots-own-account-value",
                                      Type="SecureString")
    origin, commits, packages, policy = service
    policy.write_text(POLICY.replace("[stages.prod]\n", f'[stages.prod]\nrole_arn = "{role}"\n', 1))
    for name, value in (("AWS_ACCESS_KEY_ID", creds["AccessKeyId"]), ("AWS_SECRET_ACCESS_KEY",
                                                                        creds["SecretAccessKey"]),
                        ("AWS_SESSION_TOKEN", creds["SessionToken"])):
        monkeypatch.setenv(name, value)  # CI deploys v2 in prod's account
    deploy(packages["v2"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws_env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_env["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    engine = engine_for(service, aws_env, tmp_path, stopping)
    job = engine.jobs.wait(engine.jobs.start(engine.plan("prod", "b-v1"), "U-ANA", "U-BO"), timeout=120)
    assert job.state == "succeeded", job.reason
    output = "\n".join(engine.store.output(job.id))
    assert f"sha256={hashlib.sha256(SSM_VALUE.encode()).hexdigest()}" in output
    assert "AWS: account 111111111111 (role rollback-deployer)" in output


def test_from_slack_the_values_reach_the_deploy_and_no_slack_payload(service, aws_env, tmp_path):
    from tests.conftest import engine_factory
    from tests.support.slack_session import workspaces
    from tests.support.waiting import wait_for

    sources(aws_env)
    origin, commits, packages, _ = service
    make, engines = engine_factory(aws_env, tmp_path, origin, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND,
                                   ROLLBACK_SANDBOX="auto", SLS_TEST_EXPECT_ENV=NAMES, BOT_HOST_TOKEN=HOST_VALUE)
    sessions = workspaces(make, tmp_path)
    start = next(sessions)
    try:
        ws = start(POLICY)
        art = ws.engine.artifacts
        for name in ("v1", "v2"):
            art.publish("prod", commits[name], packages[name], build_id=f"b-{name}")
        deploy(packages["v2"])
        art.mark_deployed("prod", commits["v2"], "b-v2", by="ci")
        card = ws.posts_card(ws.ana, "prod b-v1")
        ws.bo.click(card.first, "approve")
        done = card.becomes("✅", timeout=120)
        assert "Rolled back" in done["blocks"][0]["text"]["text"]
        output = "\n".join(ws.engine.store.output(ws.engine.store.jobs(limit=1)[0].id))
        assert f"sha256={hashlib.sha256(SECRET_VALUE.encode()).hexdigest()}" in output
        def sent() -> str:
            return json.dumps([ws.standin.messages, ws.standin.responses, ws.standin.files, ws.standin.home],
                              ensure_ascii=False)

        # the thread shows the deploy output, masked (posted in batches: it may follow the card's last edit)
        wait_for(lambda: "DB_PASSWORD=***" in sent(), 30, "the deploy output in the card's thread")
        sent = sent()
        for secret in (SSM_VALUE, SECRET_VALUE, HOST_VALUE):
            assert secret not in sent, "a deploy-time secret reached Slack"
    finally:
        sessions.close()
        for e in engines:
            e.jobs.shutdown()


def test_from_the_terminal_the_values_reach_the_deploy_and_no_output(service, aws_env, tmp_path, stopping):
    import subprocess
    import sys

    sources(aws_env)
    engine = engine_for(service, aws_env, tmp_path, stopping)
    engine.jobs.shutdown()  # the terminal runs the rollback, in its own process
    policy = service[3]
    policy.write_text(POLICY.replace('requesters = ["U-ANA"]\napprovers = ["U-BO"]', 'approvers = ["ana"]'))
    s = engine.settings
    env = {**s.child_env, "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_PREFIX": s.prefix, "ROLLBACK_REPO": s.repo,
           "ROLLBACK_DATA_DIR": str(s.data_dir), "ROLLBACK_SERVICE": s.service, "ROLLBACK_CONFIG": str(policy),
           "ROLLBACK_SANDBOX": "auto", "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "BOT_HOST_TOKEN": HOST_VALUE}
    done = subprocess.run([sys.executable, "-m", "bot", "rollback", "prod", "b-v1", "--yes", "--by", "ana"], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = done.stdout + done.stderr
    assert "succeeded in" in shown and "prod runs" in shown
    job = engine.store.jobs(limit=1)[0]
    assert f"sha256={hashlib.sha256(HOST_VALUE.encode()).hexdigest()}" in "\n".join(engine.store.output(job.id))
    for secret in (SSM_VALUE, SECRET_VALUE, HOST_VALUE):
        assert secret not in shown
    missing = subprocess.run([sys.executable, "-m", "bot", "rollback", "prod", "b-v3", "--yes", "--by", "ana"],
                             env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert missing.returncode != 0 and "uses `${env:NEW_KEY}`; add it under `[stages.prod.env]`" in missing.stderr


def test_while_the_deploy_runs_no_process_listing_shows_a_value(service, aws_env, tmp_path, stopping):
    from tests.support.fast_service import hold_file
    from tests.support.procs import pids_with
    from tests.support.waiting import wait_for

    sources(aws_env)
    hold = hold_file()
    hold.touch()
    engine = engine_for(service, aws_env, tmp_path, stopping, SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    try:
        job_id = engine.jobs.start(engine.plan("prod", "b-v1"), "U-ANA", "U-BO")
        workdir = str(engine.settings.data_dir / "jobs" / str(job_id) / "restore")  # in the deploy's argv
        wait_for(lambda: pids_with(workdir), 60, "the deploy to start")
        listed = {secret: pids_with(secret) for secret in (SSM_VALUE, SECRET_VALUE, HOST_VALUE)}
        hold.unlink()
        assert engine.jobs.wait(job_id, timeout=60).state == "succeeded"
        assert listed == {SSM_VALUE: [], SECRET_VALUE: [], HOST_VALUE: []}  # in the deploy's environment only
        said = [ln for ln in engine.store.output(job_id) if ln.startswith("deploy-time variables:")]
        assert said == ["deploy-time variables: DB_PASSWORD, EMAIL_SERVICE_API_KEY, FROM_HOST, STAGE_LABEL "
                        "(values masked)"]
    finally:
        hold.unlink(missing_ok=True)

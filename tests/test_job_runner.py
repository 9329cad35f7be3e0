"""The job runner (`rollback-bot run-job SPEC`): one process per job holding nothing of the bot's. Driven
here as the bot drives it (a spec file, secrets on stdin, protocol lines on stdout), against moto's S3,
STS and Lambda, with the fast tier's real deploy command, and through the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from bot.adapters.accounts import Accounts
from bot.adapters.source import SourceRepo
from bot.core.catalog import Catalog
from bot.core.events import EventStatus
from bot.core.job_protocol import (
    Credentials,
    ExitCode,
    JobEnd,
    JobSpec,
    Secrets,
    ToRunner,
    WantCredentials,
    decode_from_runner,
    encode,
)
from bot.engine.job_client import runner_command
from tests.support.fast_service import DEPLOY_COMMAND, FUNCTION, deploy, hold_file
from tests.support.waiting import wait_for

SLACK_TOKEN = "xoxb-test-token-123456"  # the engine factory's bot token


def lambda_code(env) -> str:
    return boto3.client("lambda", region_name="us-east-1").get_function(FunctionName=FUNCTION)[
        "Configuration"]["CodeSha256"]


@pytest.fixture
def published(fast_service, store, aws_env, tmp_path):
    """v2 live (deployed by CI), v1 published: what a rollback to v1 needs, and a mirror of the repository."""
    for name in ("v1", "v2"):
        store.publish("prod", fast_service.commits[name], fast_service.packages[name], build_id=f"b-{name}")
    deploy(fast_service.packages["v2"])
    mirror = SourceRepo(str(fast_service.origin), tmp_path / "mirror.git")
    mirror.fetch()
    return store.read_index("prod").find(fast_service.commits["v1"], "b-v1"), mirror


def spec_for(target, mirror: SourceRepo, tmp_path: Path, aws_env, step_timeout: float = 30) -> JobSpec:
    env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL"],
           "AWS_DEFAULT_REGION": "us-east-1", "SLS_TELEMETRY_DISABLED": "1"}
    return JobSpec(job_id=7, service="hello-service", stage="prod", target=target, mirror=mirror.mirror_dir,
                   service_dir=".", workdir=tmp_path / "jobs" / "7", plugin_cache=tmp_path / "cache",
                   plugin_cache_max=10**9, step_timeout=step_timeout, env=env,
                   deploy_template=tuple(DEPLOY_COMMAND.split()))


class Bot:
    """The test plays the bot's side of the protocol."""

    def __init__(self, spec: JobSpec, extra_env: dict[str, str] | None = None):
        spec.workdir.mkdir(parents=True, exist_ok=True)
        path = spec.workdir / "job.json"
        path.write_text(spec.to_json())
        env = {"PATH": os.environ["PATH"], **(extra_env or {})}
        self.proc = subprocess.Popen(runner_command(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=spec.workdir)
        self.messages: list = []

    def send(self, kind, value=None) -> None:
        self.proc.stdin.write(encode(kind, value))
        self.proc.stdin.flush()

    def read(self):
        line = self.proc.stdout.readline()
        assert line, f"the runner ended early: {self.proc.stderr.read()}"
        message = decode_from_runner(line)
        self.messages.append(message)
        return message

    def until(self, kind):
        while not isinstance(message := self.read(), kind):
            pass
        return message

    def output(self) -> str:
        return "\n".join(m.text for m in self.messages if hasattr(m, "text"))


def creds(aws_env, expires: float | None) -> Credentials:
    return Credentials(aws={k: aws_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}, expires=expires,
                       note="a test session")


def test_credentials_that_would_run_out_are_renewed_before_the_deploy(published, store, tmp_path, aws_env,
                                                                       fast_service):
    target, mirror = published
    bot = Bot(spec_for(target, mirror, tmp_path, aws_env, step_timeout=30))
    bot.send(ToRunner.SECRETS, Secrets(package_url=store.presign(target, 300),
                                       credentials=creds(aws_env, time.time() + 20)))
    asked = bot.until(WantCredentials)  # 20 s left cannot cover a 30 s step: the runner asks first
    assert asked.step == "deploy" and asked.until >= time.time() + 30
    fresh_until = time.time() + 3600
    bot.send(ToRunner.CREDENTIALS, creds(aws_env, fresh_until))
    end = bot.until(JobEnd)
    assert end.state == EventStatus.SUCCEEDED, end.reason
    assert bot.proc.wait(timeout=30) == ExitCode.SUCCEEDED
    said = time.strftime("%H:%M:%S UTC", time.gmtime(fresh_until))
    assert f"AWS credentials for deploy: until {said} (a test session)" in bot.output()
    assert f"AWS credentials for verify: until {said}" in bot.output()  # they still cover verify: not asked again
    assert lambda_code(aws_env) == target_code(fast_service)


def target_code(fast_service) -> str:
    from bot.adapters.stack import code_sha256

    return code_sha256(fast_service.packages["v1"] / "hello-service.zip")


def test_credentials_that_cannot_last_the_step_stop_it_before_anything_is_deployed(published, store, tmp_path,
                                                                                     aws_env, fast_service):
    target, mirror = published
    before = lambda_code(aws_env)
    bot = Bot(spec_for(target, mirror, tmp_path, aws_env, step_timeout=600))
    bot.send(ToRunner.SECRETS, Secrets(package_url=store.presign(target, 300),
                                       credentials=creds(aws_env, time.time() + 60)))
    bot.until(WantCredentials)
    bot.send(ToRunner.CREDENTIALS, creds(aws_env, time.time() + 120))  # the role's session is capped lower
    end = bot.until(JobEnd)
    assert bot.proc.wait(timeout=30) == ExitCode.FAILED
    assert end.state == EventStatus.FAILED and end.step == "deploy"
    assert "less than this step's timeout (600 s); nothing was run in this step" in end.reason
    assert "maximum session duration" in end.reason
    assert lambda_code(aws_env) == before  # nothing was deployed


def test_when_the_bot_goes_away_the_runner_stops_its_deploy(published, store, tmp_path, aws_env, fast_service):
    from tests.support.procs import pids_with

    target, mirror = published
    hold = hold_file()
    hold.touch()
    spec = spec_for(target, mirror, tmp_path, aws_env)
    spec = JobSpec(**{**spec.__dict__, "env": {**spec.env, "SLS_TEST_DEPLOY_WAIT_FOR": str(hold)}})
    bot = Bot(spec)
    bot.send(ToRunner.SECRETS, Secrets(package_url=store.presign(target, 300),
                                       credentials=creds(aws_env, None)))
    wait_for(lambda: pids_with(str(spec.workdir / "restore")), 60, "the deploy to start")
    bot.proc.stdin.close()  # the bot died: its end of the pipe closed
    assert bot.proc.wait(timeout=30) == ExitCode.CANCELLED
    assert wait_for(lambda: not pids_with(str(spec.workdir / "restore")), 10, "the deploy to stop") is True
    hold.unlink()
    assert lambda_code(aws_env) != target_code(fast_service)


def test_a_spec_it_cannot_read_is_refused_with_what_to_do(tmp_path):
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps({"version": 99}))
    done = subprocess.run(runner_command(bad), input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.USAGE
    assert "job spec version 99" in done.stderr and "run the runner of the same rollback-bot" in done.stderr
    assert "Nothing was done" in done.stderr
    done = subprocess.run(runner_command(tmp_path / "missing.json"), input="", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == ExitCode.USAGE and "missing.json" in done.stderr


def test_a_single_account_bot_hands_its_jobs_a_session_never_its_own_key(aws_env):
    accounts = Accounts(Catalog(), {**aws_env}, 1800)
    got = accounts.credentials("prod", "rollback-job-1-U-BO")
    assert got.aws["AWS_ACCESS_KEY_ID"] != aws_env["AWS_ACCESS_KEY_ID"]
    assert got.aws["AWS_SECRET_ACCESS_KEY"] != aws_env["AWS_SECRET_ACCESS_KEY"] and got.aws["AWS_SESSION_TOKEN"]
    assert got.expires is not None and got.expires >= time.time() + 1800 - 5
    assert got.note == "a session of the bot's own credentials"


def test_the_runner_of_a_real_job_holds_no_secret_of_the_bots(fast_prod, fast_service, aws_env, monkeypatch):
    """Through the engine: while the deploy runs, the runner's environment, arguments and spec file."""
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret-abc123")  # the bot's process has them
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    hold = hold_file()
    hold.touch()
    monkeypatch.setitem(fast_prod.jobs.config.env, "SLS_TEST_DEPLOY_WAIT_FOR", str(hold))
    job_id = fast_prod.jobs.start(fast_prod.plan("prod", "previous"), "U-ANA", "U-BO")
    try:
        wait_for(lambda: any(e["step"] == "deploy" for e in fast_prod.store.events(job_id)), 60,
                 "the deploy to start")
        runner = fast_prod.store.job(job_id).child_pid
        environ = Path(f"/proc/{runner}/environ").read_bytes().decode()
        cmdline = Path(f"/proc/{runner}/cmdline").read_bytes().decode()
        spec = (fast_prod.settings.data_dir / "jobs" / str(job_id) / "job.json").read_text()
    finally:
        hold.unlink()
    job = fast_prod.jobs.wait(job_id, timeout=60)
    assert job.state == "succeeded", job.reason
    assert "bot.engine.job_process" in cmdline
    for secret in (SLACK_TOKEN, "signing-secret-abc123", aws_env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in environ and secret not in cmdline and secret not in spec
    assert "AWS_SECRET_ACCESS_KEY" not in environ and "SLACK_" not in environ  # credentials come on its stdin
    assert "X-Amz-Signature" not in spec  # nor the package's link
    output = "\n".join(fast_prod.store.output(job_id))
    assert "AWS credentials for deploy: until" in output and "(a session of the bot's own credentials)" in output


@pytest.mark.parametrize("lockfile, installer", [
    ("package-lock.json", ["npm", "ci", "--no-audit", "--no-fund"]),
    ("yarn.lock", ["yarn", "install", "--frozen-lockfile", "--non-interactive"]),
    ("pnpm-lock.yaml", ["pnpm", "install", "--frozen-lockfile"]),
])
def test_the_installer_is_the_one_the_commits_lockfile_belongs_to(tmp_path, lockfile, installer):
    from bot.engine.pipeline import install_command

    (tmp_path / "package.json").write_text("{}")
    (tmp_path / lockfile).write_text("")
    assert install_command(tmp_path, None) == (installer, tmp_path / lockfile)


def test_a_commit_without_a_lockfile_is_not_installed_unpinned(tmp_path):
    from bot.engine.pipeline import StepFailed, install_command

    (tmp_path / "package.json").write_text("{}")
    with pytest.raises(StepFailed, match="no lockfile at this commit.*or set ROLLBACK_INSTALL_COMMAND"):
        install_command(tmp_path, None)

"""`rollback-bot run-job SPEC`: the job runner, one process per job, holding nothing but the job's inputs.

It reads the job spec file and, on stdin, the job's secrets (its AWS credentials, the package's
presigned link); it reads no settings, no policy, no sqlite, and its environment has no Slack token and
no key of the bot's. It runs restore → checkout → install → deploy → verify (``Pipeline``), writing
``bot.core.job_protocol`` lines on stdout, and exits with an ``ExitCode``. Before a step that uses AWS
it asks the bot for fresh credentials when the ones it holds would run out before the step's timeout;
if the bot cannot give any that last, the step fails before it starts. A cancel message, SIGTERM, or
stdin closing (the bot went away) stops the job: its commands' processes are stopped first.

``--codebuild``: the same runner inside an AWS CodeBuild build (bot.core.executor). The spec comes in
the build's environment (``ROLLBACK_JOB_SPEC``), the source is the build's own checkout of the commit,
the credentials are the project's service role's, the package is read with them, and the protocol
lines go to the build's log, which the bot follows in CloudWatch Logs. Nothing comes from the bot:
StopBuild's SIGTERM is the cancel.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from bot.adapters.aws_clients import client
from bot.adapters.codebuild import SPEC_VARIABLE
from bot.adapters.package_link import PackageLink
from bot.adapters.plugin_cache import PluginCache
from bot.adapters.sandbox import Sandbox
from bot.adapters.source import SourceRepo
from bot.adapters.stack import Stack, StackError
from bot.adapters.variables import VariableError, read_variable
from bot.core.events import Event, EventStatus
from bot.core.job_protocol import (
    MAX_LINE,
    Credentials,
    ExitCode,
    FromRunner,
    JobEnd,
    JobSpec,
    LambdaRuns,
    ProtocolError,
    Secrets,
    ToRunner,
    WantCredentials,
    decode_to_runner,
    encode,
)
from bot.core.masking import LINE_LIMIT, Masker, shorten
from bot.engine.pipeline import Cancelled, Pipeline, StepFailed

AWS_STEPS = ("deploy", "verify")
CREDENTIALS_WAIT = 60.0  # how long the runner waits for the bot to answer a request for credentials
RENEW_MARGIN = 60.0  # credentials must outlast a step's timeout by this much
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
CODEBUILD_ROLE = "the CodeBuild project's service role"
PACKAGE_LINK_SECONDS = 900


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ts))


class _Out:
    """Protocol lines on stdout, whole lines from any thread; secrets masked here, at their source."""

    def __init__(self, stream: TextIO, mask: Masker):
        self.stream, self.mask, self._lock = stream, mask, threading.Lock()
        self.line_mask = mask.lines()

    def remask(self, mask: Masker) -> None:
        with self._lock:
            self.mask, self.line_mask = mask, mask.lines()

    def send(self, kind: FromRunner, value) -> None:
        if isinstance(value, Event):
            text = self.line_mask(value.text) if value.status == EventStatus.OUTPUT else self.mask(value.text)
            value = Event(value.step, value.status, shorten(text, LINE_LIMIT + 64), value.duration)
        elif isinstance(value, JobEnd):
            value = JobEnd(value.state, value.step, self.mask(value.reason)[:4000], value.runs, value.from_cache)
        with self._lock:
            try:
                self.stream.write(encode(kind, value))
                self.stream.flush()
            except (OSError, ValueError):  # the bot went away; stdin closing stops the job
                pass


class _Inbox:
    """The bot's messages after the secrets: cancels, and credentials it was asked for."""

    def __init__(self, stream: TextIO, cancel: threading.Event):
        self.stream, self.cancel = stream, cancel
        self.credentials: queue.Queue[Credentials] = queue.Queue()
        threading.Thread(target=self._read, name="runner-inbox", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                line = self.stream.readline(MAX_LINE + 1)
            except (OSError, ValueError):
                line = ""
            if not line:  # the bot went away: nobody can see or stop this job any more
                self.cancel.set()
                return
            try:
                message = decode_to_runner(line)
            except ProtocolError:
                continue
            if message == ToRunner.CANCEL:
                self.cancel.set()
            elif isinstance(message, Credentials):
                self.credentials.put(message)


class _NoInbox:
    """On CodeBuild nothing comes from the bot: its credentials are the build's own, not temporary ones."""

    def __init__(self):
        self.credentials: queue.Queue[Credentials] = queue.Queue()


class JobProcess:
    def __init__(self, spec: JobSpec, secrets: Secrets, out: _Out, inbox: _Inbox | _NoInbox, cancel: threading.Event):
        self.spec, self.out, self.inbox, self.cancel = spec, out, inbox, cancel
        # the plugin cache's refills (a spare copy, eviction) run after the job has said how it ended
        self._pending: list = []
        self.secrets = [*secrets.mask, secrets.package_url, *(v for v in secrets.env.values() if len(v) >= 6)]
        self.secrets_env = dict(secrets.env)
        self.credentials = secrets.credentials
        self._remask()
        self.env = {**spec.env, **self.credentials.aws}
        self.pipeline = Pipeline(
            artifacts=PackageLink(secrets.package_url, spec.service),
            source=SourceRepo(str(spec.mirror), spec.mirror, spec.service_dir),
            stage=spec.stage, target=spec.target, workdir=spec.workdir,
            plugin_cache=PluginCache(spec.plugin_cache, background=self._later, max_bytes=spec.plugin_cache_max),
            env=self.env, emit=lambda event: out.send(FromRunner.EVENT, event), cancel=cancel,
            step_timeout=spec.step_timeout, deploy_template=spec.deploy_template,
            install_template=spec.install_template,
            stack_factory=lambda name, region: Stack(name, region, self.pipeline.env),
            sandbox=Sandbox(spec.bwrap, spec.hidden) if spec.bwrap else None,
            before_step=self._before, copy_plugins=spec.copy_plugins,
        )

    def _later(self, chore) -> None:
        self._pending.append(chore)

    def _remask(self) -> None:
        self.out.remask(Masker([*self.secrets, *(self.credentials.aws.get(k, "") for k in SECRET_KEYS)]))

    def _before(self, step: str) -> None:
        if step not in AWS_STEPS:
            return
        until = time.time() + self.spec.step_timeout + RENEW_MARGIN
        if self.credentials.expires is not None and self.credentials.expires < until:
            self.out.send(FromRunner.WANT_CREDENTIALS, WantCredentials(step, until))
            try:
                fresh = self.inbox.credentials.get(timeout=CREDENTIALS_WAIT)
            except queue.Empty:
                raise StepFailed(step, f"the bot gave no fresh AWS credentials within {CREDENTIALS_WAIT:.0f} s; "
                                       "nothing was run in this step") from None
            self.credentials = fresh
            self.secrets += [fresh.aws.get(k, "") for k in SECRET_KEYS]
            self._remask()
            for key in SECRET_KEYS:
                self.pipeline.env.pop(key, None)
            self.pipeline.env.update(fresh.aws)
        expires = self.credentials.expires
        if expires is not None and expires < until:
            raise StepFailed(step, f"the job's AWS credentials last until {_clock(expires)}, less than this step's "
                                   f"timeout ({self.spec.step_timeout:.0f} s); nothing was run in this step. Raise "
                                   "the role's maximum session duration, or lower ROLLBACK_STEP_TIMEOUT")
        said = f"until {_clock(expires)}" if expires is not None else "not temporary"
        self.out.send(FromRunner.EVENT, Event(step, EventStatus.OUTPUT,
                                              f"AWS credentials for {step}: {said}"
                                              + (f" ({self.credentials.note})" if self.credentials.note else "")))
        if step == "deploy":
            self._variables()

    def _variables(self) -> None:
        """The deploy-time variables: the bot's (literals, its host's) and those read here, in the stage's
        account with the job's credentials, masked from now on in all the job shows."""
        values = {**self.spec.deploy_env, **self.secrets_env}
        for var in self.spec.variables:
            try:
                values[var.name] = read_variable(var, self.pipeline.env)
            except VariableError as exc:
                raise StepFailed("deploy", f"{exc}; nothing was deployed") from exc
            self.secrets.append(values[var.name])
        self._remask()
        self.pipeline.deploy_vars = values
        if values:
            self.out.send(FromRunner.EVENT, Event("deploy", EventStatus.OUTPUT, "deploy-time variables: " + ", ".join(
                sorted(values)) + " (values masked)"))

    def run(self) -> ExitCode:
        code = self._run()
        for chore in self._pending:  # the bot has the result already; it waits for this before it cleans up
            try:
                chore()
            except OSError:
                pass
        return code

    def _run(self) -> ExitCode:
        try:
            self.pipeline.run()
        except Cancelled as exc:
            self.out.send(FromRunner.END, JobEnd(EventStatus.CANCELLED, exc.step, exc.reason, self._runs(exc.step)))
            return ExitCode.CANCELLED
        except StepFailed as exc:
            self.out.send(FromRunner.END, JobEnd(EventStatus.FAILED, exc.step, exc.reason, self._runs(exc.step)))
            return ExitCode.FAILED
        except Exception as exc:  # anything unexpected still ends with a message the bot can show
            self.out.send(FromRunner.END, JobEnd(EventStatus.FAILED, "job",
                                                 f"internal error in the job runner: {exc.__class__.__name__}: {exc}"))
            return ExitCode.FAILED
        self.out.send(FromRunner.END, JobEnd(EventStatus.SUCCEEDED,
                                             from_cache=self.pipeline.outcome.installed_from_cache))
        return ExitCode.SUCCEEDED

    def _runs(self, step: str) -> LambdaRuns | None:
        """After a deploy that did not finish (or a verify that failed): what one function runs now."""
        outcome = self.pipeline.outcome
        if step not in AWS_STEPS or outcome.info is None or outcome.package_dir is None:
            return None
        try:
            functions = outcome.info.functions(outcome.package_dir)
            if not functions:
                return None
            name, zip_path = sorted(functions.items())[0]
            check = next(iter(self.pipeline.stack_factory(outcome.info.stack_name, outcome.info.region)
                              .verify({name: zip_path})), None)
        except (StackError, OSError):
            return None
        if check is None:
            return None
        return LambdaRuns(function=name, member=zip_path.name, actual=check.actual, target=check.expected)


def run_job(spec_path: Path, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    try:
        spec = JobSpec.from_json(spec_path.read_text(encoding="utf-8"))
        first = decode_to_runner(stdin.readline(MAX_LINE + 1))
        if not isinstance(first, Secrets):
            raise ProtocolError("the bot's first message must be the job's secrets")
    except (OSError, ProtocolError) as exc:
        print(f"rollback-bot run-job: {exc}. Nothing was done.", file=sys.stderr)
        return ExitCode.USAGE
    cancel = threading.Event()
    _stop_on_signals(cancel)
    out = _Out(stdout, Masker([]))
    job = JobProcess(spec, first, out, _Inbox(stdin, cancel), cancel)
    return int(job.run())


def _stop_on_signals(cancel: threading.Event) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: cancel.set())


def run_codebuild_job(environ: Mapping[str, str] = os.environ, stdout: TextIO = sys.stdout) -> int:
    """The runner in a CodeBuild build: everything it needs is the build's own (see the module's doc)."""
    try:
        spec = JobSpec.from_json(environ.get(SPEC_VARIABLE, ""))
        src = Path(environ.get("CODEBUILD_SRC_DIR", ""))
        if not spec.package_bucket:
            raise ProtocolError("the job spec names no bucket to read the package from")
        if not (src / ".git").exists():
            raise ProtocolError(f"CODEBUILD_SRC_DIR ({src}) is not a git checkout: give the project a git source "
                                "(docs/codebuild.md)")
    except ProtocolError as exc:
        print(f"rollback-bot run-job --codebuild: {exc}. Nothing was done.", file=sys.stderr)
        return ExitCode.USAGE
    env = {k: v for k, v in environ.items() if k != SPEC_VARIABLE}
    work = Path(tempfile.mkdtemp(prefix="rollback-job-"))
    # the build's checkout is the mirror; no sandbox inside the build's container: the container is the boundary
    spec = replace(spec, mirror=src / ".git", workdir=work / "job", plugin_cache=work / "plugins", env=env, bwrap="",
                   hidden=())
    cancel = threading.Event()
    _stop_on_signals(cancel)
    out = _Out(stdout, Masker([env.get(k, "") for k in SECRET_KEYS if len(env.get(k, "")) >= 6]))
    try:  # a bearer link made with the build's own role, so the rest of the runner is the host's
        link = client("s3", env=env).generate_presigned_url(
            "get_object", Params={"Bucket": spec.package_bucket, "Key": spec.target.key},
            ExpiresIn=PACKAGE_LINK_SECONDS)
    except Exception as exc:
        out.send(FromRunner.END, JobEnd(EventStatus.FAILED, "restore", f"the package link could not be made with "
                                                                      f"the build's role: {exc.__class__.__name__}"))
        return ExitCode.FAILED
    secrets = Secrets(package_url=link, credentials=Credentials(aws={}, expires=None, note=CODEBUILD_ROLE),
                      mask=tuple(env.get(k, "") for k in SECRET_KEYS if env.get(k)))
    return int(JobProcess(spec, secrets, out, _NoInbox(), cancel).run())


if __name__ == "__main__":  # how the bot starts a runner: this module alone, not the CLI and its faces
    if sys.argv[1:] == ["--codebuild"]:
        raise SystemExit(run_codebuild_job())
    if len(sys.argv) != 2:
        print("usage: python -m bot.engine.job_process SPEC | --codebuild (the bot starts this, or a CodeBuild "
              "build does; see docs/runner.md)", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE)
    raise SystemExit(run_job(Path(sys.argv[1])))

"""The bot's side of a job run as an AWS CodeBuild build (bot.core.executor): start it with the job's
spec as an environment override and a start token of the job's own (a retried start never starts two),
follow it through BatchGetBuilds and its log in CloudWatch Logs (the runner's protocol lines, as the
host's runner writes them on stdout), stop it with StopBuild, bound how long it may take. After a
restart the bot reattaches by the build's id and reads the log on from where it had got to.

The build's log holds what the build printed, so its lines are untrusted: a line that is not protocol is
shown as output, and a success is believed only when the runner said so AND CodeBuild says SUCCEEDED.
None of the bot's credentials reach the build: it runs with the project's service role.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bot.adapters.codebuild import SPEC_VARIABLE, Build, BuildStatus, CodeBuild, CodeBuildError
from bot.core.events import Event, EventStatus
from bot.core.job_protocol import MAX_LINE, JobEnd, JobSpec, ProtocolError, WantCredentials, decode_from_runner
from bot.engine.pipeline import STEPS, Cancelled, StepFailed

POLL = 2.0  # seconds between BatchGetBuilds (CodeBuild's own console refreshes about as often)
QUEUE_ALLOWANCE = 900.0  # a build may wait this long in CodeBuild's queue before its steps' timeouts count
MISSED_ANSWERS = 5  # CodeBuild or CloudWatch Logs failing this many times in a row ends the follow
AFTER_END = 30.0  # seconds the log may lag behind a build that CodeBuild says is over


class CodeBuildJob:
    def __init__(self, spec: JobSpec, codebuild: CodeBuild, project: str, token: str, *,
                 emit: Callable[[Event], None], cancel: threading.Event,
                 on_start: Callable[[str], None] = lambda build_id: None,
                 on_read: Callable[[str], None] = lambda log_token: None,
                 on_starting: Callable[[str], None] = lambda spec_text: None,
                 build_id: str = "", log_token: str = "", spec_text: str = "", poll: float = POLL,
                 clock: Callable[[], float] = time.monotonic):
        self.spec, self.codebuild, self.project, self.token = spec, codebuild, project, token
        self.emit, self.cancel, self.on_start, self.on_read = emit, cancel, on_start, on_read
        # what is sent is recorded before it is sent: a bot that dies before the answer starts again and
        # sends the same start with the same token, and CodeBuild answers with the same build
        self.on_starting, self.spec_text = on_starting, spec_text
        self.build_id, self.log_token = build_id, log_token or None
        self.poll, self.clock = poll, clock
        self.end: JobEnd | None = None
        self.build: Build | None = None

    def run(self) -> JobEnd:
        """Run (or, with ``build_id``, follow) the build; returns how the job ended, or raises StepFailed /
        Cancelled like the host's runner."""
        if not self.build_id:
            text = self.spec_text or self.spec.to_json()
            self.on_starting(text)
            try:
                build = self.codebuild.start(self.project, self.spec.target.commit, {SPEC_VARIABLE: text}, self.token)
            except CodeBuildError as exc:
                raise StepFailed("job", str(exc)) from exc
            self.build_id = build.id
            self.on_start(build.id)
            again = " (asked again after a restart: the same build)" if self.spec_text else ""
            self.emit(Event("job", EventStatus.OUTPUT, f"CodeBuild build {build.id} started (project "
                                                       f"{self.project}){again}"))
        else:
            self.emit(Event("job", EventStatus.OUTPUT, f"following CodeBuild build {self.build_id} again after a "
                                                       "restart of the bot"))
        build = self._follow()
        return self._verdict(build)

    def _follow(self) -> Build:
        deadline = self.clock() + self.spec.step_timeout * len(STEPS) + QUEUE_ALLOWANCE
        stopped, missed, ended_at = False, 0, None
        while True:
            try:
                build = self.codebuild.get(self.build_id)
                self._read_log(build)
                missed = 0
            except CodeBuildError as exc:
                missed += 1
                if missed >= MISSED_ANSWERS:
                    raise StepFailed("job", f"{exc}; the bot stopped following the build after {missed} tries. It "
                                            f"may still run: look at build {self.build_id} in CodeBuild") from exc
                time.sleep(self.poll)
                continue
            self.build = build
            if build.status.done and (self.end is not None or ended_at is not None
                                      and self.clock() - ended_at > AFTER_END):
                return build
            if build.status.done and ended_at is None:
                ended_at = self.clock()
            if self.cancel.is_set() and not stopped and not build.status.done:
                self._stop("cancelled")
                stopped = True
            if self.clock() > deadline and not stopped:
                self._stop("ran past its time")
                stopped = True
                self.emit(Event("job", EventStatus.OUTPUT, "the build ran past the job's time: StopBuild sent"))
            if self.cancel.is_set():
                time.sleep(self.poll)  # stopping: the build's own end is what is waited for now
            else:
                self.cancel.wait(self.poll)

    def _stop(self, why: str) -> None:
        try:
            self.codebuild.stop(self.build_id)
            self.emit(Event("job", EventStatus.OUTPUT, f"{why}: StopBuild sent for build {self.build_id}"))
        except CodeBuildError as exc:
            self.emit(Event("job", EventStatus.OUTPUT, f"{why}, but {exc}"))

    def _read_log(self, build: Build) -> None:
        while True:
            lines, token = self.codebuild.log_lines(build, self.log_token)
            for line in lines:
                self._handle(line)
            if token != self.log_token:
                self.log_token = token
                self.on_read(token or "")
            if not lines:
                return

    def _handle(self, line: str) -> None:
        line = line.rstrip("\n")[:MAX_LINE]
        if not line.startswith("{"):  # CodeBuild's own "[Container] …" lines, the install phase's output
            if line.strip() and self.end is None:
                self.emit(Event("job", EventStatus.OUTPUT, f"build: {line}"))
            return
        if self.end is not None:
            return  # nothing after the runner's last word counts
        try:
            message = decode_from_runner(line + "\n")
        except ProtocolError as exc:
            self.emit(Event("job", EventStatus.OUTPUT, f"build log: {exc}"))
            return
        if isinstance(message, Event):
            self.emit(message)
        elif isinstance(message, JobEnd):
            self.end = message
        elif isinstance(message, WantCredentials):  # the build's role is its own: nothing to renew from here
            self.emit(Event(message.step, EventStatus.OUTPUT, "the build asked for credentials; it has its role's"))

    def _verdict(self, build: Build) -> JobEnd:
        where = f"CodeBuild build {build.id}" + (f" ({build.link})" if build.link else "")
        end = self.end
        if end is not None and end.state == EventStatus.CANCELLED:
            raise Cancelled(end.step, end.reason)
        if end is not None and end.state == EventStatus.FAILED:
            raise StepFailed(end.step, end.reason)
        if end is not None and build.status is BuildStatus.SUCCEEDED:
            return end
        if build.status is BuildStatus.STOPPED or self.cancel.is_set():
            raise Cancelled("job", f"cancelled; {where} was stopped")
        if end is not None:  # the log says succeeded, CodeBuild does not: the log is not the authority
            raise StepFailed("job", f"the job's log says it succeeded but CodeBuild says {build.status}: {where}")
        raise StepFailed("job", f"{where} ended {build.status} in phase {build.phase or '?'} without saying how "
                                "the job ended; look at its log")

"""The bot's side of a job runner: start `rollback-bot run-job SPEC` with nothing of the bot's, hand it the
job's secrets on stdin, turn its protocol lines back into the job's events, answer its requests for fresh
credentials, pass a cancel on, and bound how long it may take."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bot.core.events import Event, EventStatus
from bot.core.job_protocol import (
    MAX_LINE,
    Credentials,
    JobEnd,
    JobSpec,
    ProtocolError,
    Secrets,
    ToRunner,
    WantCredentials,
    decode_from_runner,
    encode,
)
from bot.engine.pipeline import STEPS, Cancelled, StepFailed, kill_group

# What the runner's own environment may hold of the bot's: enough to start Python, nothing secret.
RUNNER_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")
STDERR_TAIL = 2000
CHORES_WAIT = 600.0  # seconds a runner may spend on the plugin cache after its job ended


def runner_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "bot.engine.job_process", str(spec_path)]


class JobClient:
    def __init__(self, spec: JobSpec, secrets: Secrets, *, emit: Callable[[Event], None],
                 cancel: threading.Event, renew: Callable[[], Credentials],
                 on_secret: Callable[[Credentials], None] = lambda c: None,
                 on_start: Callable[[int], None] = lambda pid: None, env: Mapping[str, str] | None = None,
                 background: Callable[[Callable[[], None]], None] | None = None):
        self.spec, self.secrets = spec, secrets
        self.emit, self.cancel, self.renew = emit, cancel, renew
        self.on_secret, self.on_start = on_secret, on_start
        # where the wait for a finished runner's chores goes (the job runner's janitor, so idle() sees it)
        self.background = background or (lambda fn: threading.Thread(target=fn, daemon=True).start())
        source = os.environ if env is None else env
        self.env = {k: source[k] for k in RUNNER_ENV if k in source}
        self.env["HOME"] = str(spec.workdir)  # nothing of the bot's home
        self.end: JobEnd | None = None
        self._stdin_lock = threading.Lock()

    def _write_spec(self) -> Path:
        path = self.spec.workdir / "job.json"
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.spec.to_json())
        return path

    def _send(self, proc: subprocess.Popen, kind: ToRunner, value=None) -> None:
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(encode(kind, value))
            proc.stdin.flush()

    def run(self) -> JobEnd:
        """Run the job; returns how it ended, or raises StepFailed / Cancelled like the pipeline does."""
        spec_path = self._write_spec()
        stderr_path = self.spec.workdir / "runner.stderr"
        with open(stderr_path, "w", encoding="utf-8") as stderr:
            proc = subprocess.Popen(
                runner_command(spec_path), cwd=self.spec.workdir, env=self.env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, text=True, errors="replace", bufsize=1,
                start_new_session=True,  # its own group: cancel and recovery stop all of it
            )
        self.on_start(proc.pid)
        self._send(proc, ToRunner.SECRETS, self.secrets)
        stopped = threading.Event()
        # Every step has its timeout inside the runner; this bounds the runner itself.
        deadline = time.monotonic() + self.spec.step_timeout * len(STEPS) + 120

        def guard() -> None:
            asked = False
            while not stopped.wait(0.2):
                if self.cancel.is_set() and not asked:
                    self._send(proc, ToRunner.CANCEL)
                    asked = True
                if time.monotonic() > deadline:
                    kill_group(proc.pid, proc)
                    return

        watcher = threading.Thread(target=guard, name=f"job-{self.spec.job_id}-guard", daemon=True)
        watcher.start()
        try:
            assert proc.stdout is not None
            for line in iter(lambda: proc.stdout.readline(MAX_LINE + 1), ""):
                self._handle(proc, line)
                if self.end is not None:
                    break  # the result is in; the runner may still refill the plugin cache
        finally:
            stopped.set()
            if self.end is None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                kill_group(proc.pid, proc)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            else:
                self.background(lambda: self._wind_down(proc))
        if self.end is None:
            tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-STDERR_TAIL:].strip()
            if self.cancel.is_set():
                raise Cancelled("job", "cancelled; the job runner was stopped")
            raise StepFailed("job", f"the job runner exited with code {proc.returncode} without saying how the "
                                    f"job ended{': ' + tail if tail else ''}")
        if self.end.state == EventStatus.CANCELLED:
            raise Cancelled(self.end.step, self.end.reason)
        if self.end.state == EventStatus.FAILED:
            raise StepFailed(self.end.step, self.end.reason)
        return self.end

    def _wind_down(self, proc: subprocess.Popen) -> None:
        """After the result: let the runner finish its chores, within a bound, then stop what is left."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=CHORES_WAIT)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        kill_group(proc.pid, proc)

    def _handle(self, proc: subprocess.Popen, line: str) -> None:
        try:
            message = decode_from_runner(line)
        except ProtocolError as exc:  # not ours to trust: shown as output, masked on the way out
            self.emit(Event("job", EventStatus.OUTPUT, f"job runner: {exc}"))
            return
        if isinstance(message, Event):
            self.emit(message)
        elif isinstance(message, JobEnd):
            self.end = message
        elif isinstance(message, WantCredentials):
            try:
                fresh = self.renew()
            except Exception as exc:  # the runner fails the step closed when no answer comes
                self.emit(Event(message.step, EventStatus.OUTPUT, f"could not renew the job's AWS credentials: {exc}"))
                return
            self.on_secret(fresh)
            self._send(proc, ToRunner.CREDENTIALS, fresh)

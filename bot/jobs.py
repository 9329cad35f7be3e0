"""Rollback jobs: start one per stage at a time, run it in a worker, cancel it, recover after a crash."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bot.artifacts import ArtifactError, ArtifactStore
from bot.masking import Masker
from bot.pipeline import Cancelled, Event, Pipeline, StepFailed, kill_group
from bot.plan import Plan
from bot.plugin_cache import PluginCache
from bot.source import SourceRepo
from bot.stack import Stack
from bot.stage_index import InUse, StageIndex
from bot.store import StageBusy, Store

Listener = Callable[[int, Event], None]
OUTPUT_BATCH = 200
OUTPUT_FLUSH_SECONDS = 0.5


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    env: Mapping[str, str]  # the environment subprocesses get, nothing else
    step_timeout: float = 1800.0
    deploy_template: tuple[str, ...] | None = None
    install_template: tuple[str, ...] | None = None
    workers: int = 2


class _OutputBuffer:
    """Batches output lines into the store: one insert per batch, not per line."""

    def __init__(self, store: Store, job_id: int):
        self.store, self.job_id = store, job_id
        self.lines: list[tuple[str, str]] = []
        self.last = time.monotonic()

    def add(self, step: str, line: str) -> None:
        self.lines.append((step, line))
        if len(self.lines) >= OUTPUT_BATCH or time.monotonic() - self.last > OUTPUT_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            for step in dict.fromkeys(s for s, _ in self.lines):
                self.store.add_output(self.job_id, step, [ln for s, ln in self.lines if s == step])
            self.lines = []
        self.last = time.monotonic()


class JobRunner:
    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        artifacts: ArtifactStore,
        source: SourceRepo,
        masker: Masker,
        clock: Callable[[], float] = time.time,
        stack_factory: Callable[[str, str], Stack] = Stack,
    ):
        self.config = config
        self.store = store
        self.artifacts = artifacts
        self.source = source
        self.mask = masker
        self.clock = clock
        self.stack_factory = stack_factory
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rollback-job")
        # Work that need not delay a result: removing a finished job's folder, refilling the plugin cache.
        self.janitor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollback-janitor")
        self._chores: list[Future] = []
        self.plugin_cache = PluginCache(config.data_dir / "plugin-cache", background=self._later)
        self.listeners: list[Listener] = []
        self._cancels: dict[int, threading.Event] = {}
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()

    # -- starting --------------------------------------------------------------------------------

    def start(self, plan: Plan, requested_by: str, approved_by: str = "", origin: str = "cli",
              job_id: int | None = None, **extra) -> int:
        """Take the stage's lock and run the job in a worker. Raises StageBusy naming the holder.
        ``job_id`` is a job already recorded (an approved plan card); otherwise one is created."""
        holder = approved_by or requested_by
        fields = dict(
            stage=plan.stage, target_commit=plan.target.commit, target_build=plan.target.build_id,
            live_commit=plan.live.commit if plan.live else "", live_build=plan.live.build_id if plan.live else "",
            requested_by=requested_by, approved_by=approved_by, origin=origin, state="running",
            started=self.clock(), stack_name=plan.stack_name, region=plan.region,
            host=socket.gethostname(), pid=os.getpid(), **extra,
        )
        if job_id is None:
            job_id = self.store.create_job(**fields)
        else:
            self.store.update_job(job_id, **fields)
        try:
            self.store.acquire_lock(plan.stage, job_id, holder)
        except StageBusy:
            self.store.update_job(job_id, state="refused", finished=self.clock(), reason="stage busy")
            raise
        self.store.audit(holder, "rollback.start", plan.stage, job_id, target=plan.target.label(),
                         requested_by=requested_by, approved_by=approved_by, origin=origin)
        cancel = threading.Event()
        with self._lock:
            self._cancels[job_id] = cancel
            self._futures[job_id] = self.executor.submit(self._run, job_id, plan, cancel, holder)
        return job_id

    def wait(self, job_id: int, timeout: float | None = None) -> dict:
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout=timeout)
        return self.store.job(job_id)

    def cancel(self, job_id: int, by: str) -> bool:
        """Stop a running job (its whole process group). False when it is not running here."""
        with self._lock:
            cancel = self._cancels.get(job_id)
        job = self.store.job(job_id)
        if cancel is None or job is None or job["state"] != "running":
            return False
        self.store.audit(by, "rollback.cancel", job["stage"], job_id)
        self.store.update_job(job_id, cancelled_by=by)
        cancel.set()
        return True

    def running_job(self, stage: str) -> dict | None:
        lock = self.store.lock_of(stage)
        return self.store.job(lock["job_id"]) if lock else None

    def _later(self, chore: Callable[[], None]) -> None:
        with self._lock:
            self._chores = [f for f in self._chores if not f.done()]
            self._chores.append(self.janitor.submit(chore))

    def idle(self, timeout: float | None = 60) -> None:
        """Wait for background chores (folder clean-up, cache refills) to finish."""
        with self._lock:
            chores = list(self._chores)
        for chore in chores:
            chore.result(timeout=timeout)

    def shutdown(self) -> None:
        with self._lock:
            for cancel in self._cancels.values():
                cancel.set()
        self.executor.shutdown(wait=True)
        self.janitor.shutdown(wait=True)

    # -- running ---------------------------------------------------------------------------------

    def _emit(self, job_id: int, buffer: _OutputBuffer, event: Event) -> None:
        event = Event(event.step, event.status, self.mask(event.text), event.duration)
        if event.status == "output":
            buffer.add(event.step, event.text)
        else:
            buffer.flush()
            self.store.add_event(job_id, event.step, event.status, event.text, event.duration)
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # a broken listener (Slack down, say) never stops a deploy
                listener(job_id, event)

    def _run(self, job_id: int, plan: Plan, cancel: threading.Event, holder: str) -> None:
        buffer = _OutputBuffer(self.store, job_id)
        emit = lambda event: self._emit(job_id, buffer, event)  # noqa: E731
        workdir = self.config.data_dir / "jobs" / str(job_id)
        marker = InUse(plan.target.commit, plan.target.build_id, str(job_id), self.clock())
        state, reason, in_index = "failed", "", True
        try:
            self._mark_in_use(plan.stage, marker, add=True, emit=emit)
            pipeline = Pipeline(
                artifacts=self.artifacts, source=self.source, stage=plan.stage, target=plan.target,
                workdir=workdir, plugin_cache=self.plugin_cache, env=self.config.env,
                emit=emit, cancel=cancel, step_timeout=self.config.step_timeout,
                deploy_template=self.config.deploy_template, install_template=self.config.install_template,
                on_process=lambda pid: self.store.update_job(job_id, child_pid=pid),
                stack_factory=self.stack_factory,
            )
            pipeline.run()
            in_index = self._record_success(job_id, plan, holder, marker, emit)
            state = "succeeded"
        except Cancelled as exc:
            state, reason = "cancelled", f"{exc.step}: {exc.reason}" + self._stack_note(exc.step, plan)
        except StepFailed as exc:
            reason = f"{exc.step}: {exc.reason}" + self._stack_note(exc.step, plan)
        except Exception as exc:  # anything unexpected still ends the job cleanly and recorded
            reason = f"internal error: {exc.__class__.__name__}: {self.mask(str(exc))}"
        finally:
            buffer.flush()
            if in_index:
                self._mark_in_use(plan.stage, marker, add=False, emit=emit)
            self.store.update_job(job_id, state=state, reason=reason, finished=self.clock())
            self.store.release_lock(plan.stage, job_id)
            self.store.audit(holder, f"rollback.{state}", plan.stage, job_id, reason=reason)
            with self._lock:
                self._cancels.pop(job_id, None)
            emit(Event("job", state, reason))
            self._later(lambda: self._remove_workdir(workdir))

    def _stack_note(self, step: str, plan: Plan) -> str:
        """After a deploy that did not finish, what CloudFormation says: it may still be updating."""
        if step != "deploy" or not plan.stack_name:
            return ""
        status = self.stack_factory(plan.stack_name, plan.region or "us-east-1").status()
        return f". Stack {plan.stack_name} is {status}: check it before doing anything else"

    def _remove_workdir(self, workdir: Path) -> None:
        if (workdir / "src").exists():
            self.source.remove_checkout(workdir / "src")
        shutil.rmtree(workdir, ignore_errors=True)

    def _mark_in_use(self, stage: str, marker: InUse, add: bool, emit) -> None:
        def change(index: StageIndex) -> None:
            index.in_use = [u for u in index.in_use if u.job != marker.job]
            if add:
                index.in_use.append(marker)

        try:
            self.artifacts.update_index(stage, change)
        except ArtifactError as exc:  # only prune reads this; not worth failing a rollback over
            emit(Event("job", "output", f"warning: could not record the job in index.json: {exc}"))

    def _record_success(self, job_id: int, plan: Plan, holder: str, marker: InUse, emit) -> bool:
        """Record the rollback in index.json, dropping the job's in-use mark in the same write.
        Returns True when the in-use mark is still there to remove."""
        reason = f"rolled back to {plan.target.label()} by job {job_id}"

        def change(index: StageIndex) -> list:
            index.in_use = [u for u in index.in_use if u.job != marker.job]
            return index.record_rollback(plan.target, holder, self.clock(), reason)

        try:
            marked = self.artifacts.update_index(plan.stage, change)
        except ArtifactError as exc:
            # The deploy worked; only the record failed. Say so plainly rather than call it a failure.
            emit(Event("job", "output", f"warning: deployed, but index.json could not be updated: {exc}. "
                                        "Run `rollback-bot mark-deployed` and freeze CI by hand."))
            return True
        for art in marked:
            emit(Event("job", "output", f"marked bad: {art.label()}"))
        emit(Event("job", "output", f"stage {plan.stage} frozen for CI: {reason}"))
        return False

    # -- recovery --------------------------------------------------------------------------------

    def recover(self) -> list[dict]:
        """Mark jobs whose bot died as interrupted: stop their leftover processes, release their
        locks, and record the stack's actual status, which someone must now check."""
        host = socket.gethostname()
        recovered = []
        for job in self.store.jobs(states=["running"], limit=1000):
            with self._lock:
                ours = job["id"] in self._cancels
            if ours or (job.get("host") == host and job.get("pid") and _alive(job["pid"])):
                continue  # still running, here or in another live process on this machine
            if job.get("child_pid"):
                kill_group(job["child_pid"])
            status = "UNKNOWN"
            if job.get("stack_name"):
                status = self.stack_factory(job["stack_name"], job.get("region") or "us-east-1").status()
            reason = (f"interrupted: the bot stopped during the job; stack {job.get('stack_name') or '?'} "
                      f"is {status}. Check the stage before doing anything else")
            self.store.update_job(job["id"], state="interrupted", reason=reason, finished=self.clock(),
                                  stack_status=status)
            self.store.add_event(job["id"], "job", "interrupted", reason)
            self.store.release_lock(job["stage"], job["id"])
            self.store.audit("rollback-bot", "rollback.interrupted", job["stage"], job["id"], stack_status=status)
            with contextlib.suppress(ArtifactError):
                self.artifacts.update_index(
                    job["stage"], lambda index, j=str(job["id"]): setattr(
                        index, "in_use", [u for u in index.in_use if u.job != j])
                )
            recovered.append(self.store.job(job["id"]))
        return recovered


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

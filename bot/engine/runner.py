"""Rollback jobs: start one per stage at a time, run it in a worker, cancel it, recover after a crash."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bot.adapters.accounts import OWN_KEYS
from bot.adapters.artifacts import ArtifactError, ArtifactStore
from bot.adapters.codebuild import CodeBuild
from bot.adapters.lease import LeaseLost, LeaseStore, LeaseUnavailable
from bot.adapters.plan_board import PlanBoard
from bot.adapters.plugin_cache import PluginCache
from bot.adapters.sandbox import Sandbox
from bot.adapters.source import SourceError, SourceRepo
from bot.adapters.stack import Stack
from bot.adapters.store import StageBusy, Store
from bot.core.errors import UserError
from bot.core.executor import LOCAL, Executor
from bot.core.job_protocol import Credentials, JobSpec, LambdaRuns, Secrets
from bot.core.jobs import Job, JobState, Recorded
from bot.core.keys import StageKey
from bot.core.masking import Masker
from bot.core.records import HeldLock
from bot.core.stage_index import Artifact, InUse, StageIndex
from bot.core.variables import SourceKind, VariableSource
from bot.engine.codebuild_job import CodeBuildJob
from bot.engine.job_client import JobClient
from bot.engine.lease_keeper import LeaseKeeper
from bot.engine.pipeline import Cancelled, Event, StepFailed, kill_group
from bot.engine.planner import Plan

Listener = Callable[[int, Event], None]
OUTPUT_BATCH = 200
OUTPUT_FLUSH_SECONDS = 0.5
RECORD_RETRY_MAX = 300.0  # the longest pause between attempts to record a result in index.json
OWN_CREDENTIALS = "the bot's own credentials"
PACKAGE_LINK_SECONDS = 900  # the runner downloads the package first thing: a link for 15 minutes is plenty
log = logging.getLogger("rollback-bot.engine.runner")


CANCEL_POLL = 1.0  # seconds: how soon a running job sees a cancel asked for by another process
STARTING = "starting:"  # a job's build_ref while StartBuild has not answered: the token it was sent with
TICKET_POLL = 3  # rounds of CANCEL_POLL between reads of a running job's plan ticket (another replica's cancel)


def process_start(pid: int) -> str:
    """When a process started (clock ticks since boot, from /proc): with the pid, it names one
    process, so a pid reused after a restart is not taken for the runner. Empty where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


class StaleResult(Exception):
    """The stage moved on while the job ran: its result must not be written over what is there now."""

    def __init__(self, now: str):
        self.now = now
        super().__init__(now)


class CancelOutcome(StrEnum):
    CANCELLING = "cancelling"  # its processes are being stopped here
    ENDED = "ended"  # it is not running
    RUNNER_GONE = "runner_gone"  # its bot died: the job is marked interrupted and its lock released
    ASKED = "asked"  # another live process on this machine runs it and sees the request within CANCEL_POLL s


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    env: Mapping[str, str]  # the environment subprocesses get, nothing else
    step_timeout: float = 1800.0
    deploy_template: tuple[str, ...] | None = None
    install_template: tuple[str, ...] | None = None
    workers: int = 2
    plugin_cache_max: int = 10 * 1024**3
    sandbox: Sandbox | None = None  # where a job's commands run (None: unsandboxed, and every card says so)
    copy_plugins: bool = False  # ROLLBACK_NODE_MODULES=copy: a sandboxed deploy gets a copy of its plugin set


class _OutputBuffer:
    """Batches output lines into the store (one insert per batch, not per line) and appends every
    line to the job's log file, the full log that sqlite keeps only the head and tail of."""

    def __init__(self, store: Store, job_id: int, log_path: Path):
        self.store, self.job_id = store, job_id
        self.lines: list[tuple[str, str]] = []
        self.last = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in close())

    def add(self, step: str, line: str) -> None:
        self.lines.append((step, line))
        if len(self.lines) >= OUTPUT_BATCH or time.monotonic() - self.last > OUTPUT_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        self.last = time.monotonic()
        if lines:
            self.file.write("".join(f"{ln}\n" for _, ln in lines))
            self.file.flush()
            for step in dict.fromkeys(s for s, _ in lines):
                self.store.add_output(self.job_id, step, [ln for s, ln in lines if s == step])

    def close(self) -> None:
        self.file.close()


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
        sleep: Callable[[float], None] = time.sleep,
        aws_env: Callable[[str, str], Mapping[str, str]] | None = None,
        plugin_cache: PluginCache | None = None,
        credentials: Callable[[str, str], Credentials] | None = None,
        variables: Callable[[str], Mapping[str, VariableSource]] = lambda stage: {},
        host_env: Mapping[str, str] | None = None,
        leases: LeaseStore | None = None,
        executor: Callable[[str], Executor] = lambda stage: LOCAL,
        codebuild: Callable[[str], CodeBuild] | None = None,
        plans: PlanBoard | None = None,
    ):
        self.config = config
        # The stage lease in S3, beside index.json: the lock every replica, terminal and pipeline honours
        # (sqlite's lock still keeps this machine's processes apart, cheaply, before S3 is asked).
        self.keeper = LeaseKeeper(leases, self._lease_lost) if leases is not None else None
        self.service = artifacts.service
        # The AWS environment of a stage's job: (stage, session name) -> the variables; by default the
        # bot's own. With a catalog, the stage's assumed role (bot.adapters.accounts).
        self.aws_env = aws_env or self._own_env
        # A job's credentials, handed to its runner: (stage, session name) -> temporary credentials
        self.credentials = credentials or self._own_credentials
        self.plans = plans  # pending plans in S3: a cancel clicked on another replica arrives in its ticket
        self.runs_on = executor  # where a stage's deploys run (bot.core.executor)
        self.codebuild = codebuild or (lambda stage: CodeBuild(self.aws_env(stage, f"rollback-bot-build-{stage}")))
        self.variables = variables  # a stage's deploy-time variables ([stages.<stage>.env], bot.core.variables)
        self.host_env = dict(host_env or {})  # the bot host's variables those name (from_env)
        self.store = store
        self.artifacts = artifacts
        self.source = source
        self.mask = masker
        self.clock = clock
        self.sleep = sleep
        self.stack_factory = stack_factory
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rollback-job")
        # Work that need not delay a result: removing a finished job's folder, refilling the plugin cache.
        self.janitor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollback-janitor")
        self._chores: list[Future] = []
        # Shared by every service's runner: services with the same lockfile share installed plugins.
        self.plugin_cache = plugin_cache or PluginCache(config.data_dir / "plugin-cache", background=self._later,
                                                        max_bytes=config.plugin_cache_max)
        # Listeners for every job's events (the Slack app's announcements), and per-job subscribers,
        # which are dropped when their job ends so nothing accumulates.
        self.listeners: list[Listener] = []
        self._subscribers: dict[int, list[Listener]] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._cancel_watch: threading.Thread | None = None
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.pid, self.pid_start = os.getpid(), process_start(os.getpid())
        self.followed: list[Job] = []  # CodeBuild jobs of a bot that was gone, followed from here since recover()

    def log_path(self, job_id: int) -> Path:
        return self.config.data_dir / "logs" / f"job-{job_id}.log"

    def subscribe(self, job_id: int, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with the events of one job until it ends; returns an unsubscribe."""
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(KeyError, ValueError):
                self._subscribers[job_id].remove(listener)

        return unsubscribe

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._subscribers.values())

    # -- starting --------------------------------------------------------------------------------

    def start(self, plan: Plan, requested_by: str, approved_by: str = "", origin: str = "cli",
              job_id: int | None = None, unfreeze: bool = False, audit: dict | None = None, locked: bool = False,
              **extra) -> int:
        """Take the stage's lock and run the job in a worker. Raises StageBusy naming the holder.
        ``job_id`` is a job already recorded (an approved plan card); otherwise one is created.
        ``unfreeze``: a roll forward also lifts the CI freeze (the person asked for it)."""
        holder = approved_by or requested_by
        fields = dict(
            service=self.service, stage=plan.stage, target_commit=plan.target.commit, target_build=plan.target.build_id,
            live_commit=plan.live.commit if plan.live else "", live_build=plan.live.build_id if plan.live else "",
            requested_by=requested_by, approved_by=approved_by, origin=origin, state=JobState.RUNNING,
            started=self.clock(), stack_name=plan.stack_name, region=plan.region,
            host=socket.gethostname(), pid=self.pid, pid_start=self.pid_start, unfreeze=int(unfreeze), **extra,
        )
        if job_id is None:
            job_id = self.store.create_job(**fields)
        else:
            self.store.update_job(job_id, **fields)
        try:
            if not locked:  # an app rollback took every service's lock for its jobs at once
                self.store.acquire_lock(self.key(plan.stage), job_id, holder)
        except StageBusy:
            self.store.update_job(job_id, state=JobState.REFUSED, finished=self.clock(), reason="stage busy")
            raise
        try:
            self.take_lease(plan.stage, job_id, approved_by, requested_by, origin)
        except StageBusy as exc:
            if not locked:
                self.store.release_lock(self.key(plan.stage), job_id)
            self.store.update_job(job_id, state=JobState.REFUSED, finished=self.clock(), reason=str(exc))
            raise
        self.store.audit(holder, "rollback.start", self.key(plan.stage), job_id, target=plan.target.label(),
                         requested_by=requested_by, approved_by=approved_by, origin=origin,
                         direction="forward" if plan.forward else "rollback", **(audit or {}))
        cancel = threading.Event()
        with self._lock:
            self._cancels[job_id] = cancel
            self._futures[job_id] = self.executor.submit(self._run, job_id, plan, cancel, holder, unfreeze)
            if self._cancel_watch is None:
                self._cancel_watch = threading.Thread(target=self._watch_cancels, daemon=True,
                                                      name=f"rollback-cancels-{self.service}")
                self._cancel_watch.start()
        return job_id

    def take_lease(self, stage: str, job_id: int, approved_by: str, requested_by: str, origin: str,
                   several: bool = False) -> None:
        """Hold the stage's lease in S3 for ``job_id`` (once: an app rollback takes its services' first).
        Raises StageBusy naming the holder, also when S3 cannot say who holds it (fail closed)."""
        if self.keeper is None or self.keeper.holds(job_id):
            return
        job = self.store.job(job_id)
        plan = job.uid if job else ""
        if job is not None and job.app_id and not plan:  # an app's part: the app's plan (its card, its ticket)
            app = self.store.job(job.app_id)
            plan = app.uid if app else ""
        try:
            held = self.keeper.take(stage, job_id, approved_by, requested_by, origin, self.pid, several, plan)
        except LeaseUnavailable as exc:
            raise StageBusy(self.key(stage), HeldLock(self.service, stage, "?"), several, message=str(exc)) from exc
        self.store.update_job(job_id, lease=held.lease.token)

    def drop_lease(self, job_id: int) -> None:
        if self.keeper is not None:
            self.keeper.drop(job_id)

    def free_lease(self, job: Job) -> None:
        """Let go of a job's lease: this process's own, or one a dead process recorded (by its token)."""
        if self.keeper is None:
            return
        if self.keeper.holds(job.id):
            self.keeper.drop(job.id)
        elif job.lease:
            self._guard("release a recorded lease", lambda: self.keeper.leases.release_job(job.stage, job.lease))

    def _lease_lost(self, job_id: int, why: str) -> None:
        with self._lock:
            cancel = self._cancels.get(job_id)
        self._guard("record the lost lease", lambda: self.store.update_job(
            job_id, cancelled_by=f"rollback-bot ({why})"))
        if cancel is not None:
            cancel.set()

    def _watch_cancels(self) -> None:
        """Cancels that another process asked for through the store (`rollback-bot cancel` at a
        terminal, a Slack bot for a terminal's job): seen within CANCEL_POLL seconds; and those another
        replica asked for through the plan's ticket in S3, within TICKET_POLL seconds. Runs while
        this runner has jobs."""
        rounds = 0
        while not self._stopping.wait(CANCEL_POLL):
            rounds += 1
            with self._lock:
                if not self._cancels:
                    self._cancel_watch = None
                    return
                waiting = {i: e for i, e in self._cancels.items() if not e.is_set()}
            for job_id, event in waiting.items():
                try:
                    job = self.store.job(job_id)
                except Exception:  # a busy or failing database: try again on the next round
                    log.warning("job %s: could not read whether it was cancelled", job_id, exc_info=True)
                    continue
                if job and job.state == JobState.RUNNING and job.cancelled_by:
                    log.info("job %s: cancelled by %s from another process", job_id, job.cancelled_by)
                    event.set()
                elif job and job.uid and self.plans is not None and rounds % TICKET_POLL == 0:
                    self._ticket_cancel(job, event)

    def _ticket_cancel(self, job: Job, event: threading.Event) -> None:
        try:
            found = self.plans.read(job.stage, job.uid)
        except Exception:  # S3 failing, a ticket rewritten by hand: a cancel is asked again, or here
            log.warning("job %s: could not read its plan's ticket", job.id, exc_info=True)
            return
        if found is not None and found[0].cancel_by:
            by = found[0].cancel_by
            log.info("job %s: cancelled by %s on another replica", job.id, by)
            self.store.audit(by, "rollback.cancel", self.key(job.stage), job.id, via="another replica")
            self.store.update_job(job.id, cancelled_by=by)
            event.set()

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout=timeout)
        return self.store.job(job_id)

    def cancel(self, job_id: int, by: str) -> CancelOutcome:
        """Stop a job. Returns what happened (see ``CancelOutcome``)."""
        with self._lock:
            cancel = self._cancels.get(job_id)
        job = self.store.job(job_id)
        if job is None or job.state != JobState.RUNNING:
            return CancelOutcome.ENDED
        if cancel is None:
            if self._runner_alive(job):  # another process on this machine runs it: ask it through the store
                self.store.audit(by, "rollback.cancel", self.key(job.stage), job_id, via=f"pid {job.pid}")
                self.store.update_job(job_id, cancelled_by=by)
                return CancelOutcome.ASKED
            self._interrupt(job, by=by)
            return CancelOutcome.RUNNER_GONE
        self.store.audit(by, "rollback.cancel", self.key(job.stage), job_id)
        self.store.update_job(job_id, cancelled_by=by)
        cancel.set()
        return CancelOutcome.CANCELLING

    def _own_env(self, stage: str, name: str) -> Mapping[str, str]:
        return self.config.env

    def _own_credentials(self, stage: str, name: str) -> Credentials:
        aws = {k: v for k, v in self.config.env.items()
               if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
        return Credentials(aws=aws, expires=None, note=OWN_CREDENTIALS)

    def key(self, stage: str) -> StageKey:
        return StageKey(self.service, stage)

    def running_job(self, stage: str) -> Job | None:
        lock = self.store.lock_of(self.key(stage))
        return self.store.job(lock.job_id) if lock else None

    def _later(self, chore: Callable[[], None]) -> None:
        with self._lock:
            self._chores = [f for f in self._chores if not f.done()]
            if not self._stopping.is_set():
                self._chores.append(self.janitor.submit(chore))

    def idle(self, timeout: float | None = 60) -> None:
        """Wait for background chores (folder clean-up, cache refills) to finish."""
        with self._lock:
            chores = list(self._chores)
        for chore in chores:
            chore.result(timeout=timeout)

    def shutdown(self) -> None:
        self._stopping.set()
        if self.keeper is not None:
            self.keeper.stop()
        with self._lock:
            for cancel in self._cancels.values():
                cancel.set()
        self.executor.shutdown(wait=True)
        self.janitor.shutdown(wait=True)

    # -- running ---------------------------------------------------------------------------------

    def _notify(self, job_id: int, event: Event) -> None:
        with self._lock:
            targets = list(self.listeners) + list(self._subscribers.get(job_id, ()))
        for listener in targets:
            try:
                listener(job_id, event)
            except Exception:  # a broken listener (Slack down, say) never stops a deploy
                log.exception("a listener of job %s failed", job_id)

    def _emit(self, job_id: int, buffer: _OutputBuffer, mask_line, event: Event) -> None:
        text = mask_line(event.text) if event.status == "output" else self.mask(event.text)
        event = Event(event.step, event.status, text, event.duration)
        if event.status == "output":
            buffer.add(event.step, event.text)
        else:
            buffer.flush()
            self.store.add_event(job_id, event.step, event.status, event.text, event.duration)
        self._notify(job_id, event)

    def _host_job(self, job_id: int, plan: Plan, workdir: Path, cancel: threading.Event, emit, holder: str,
                  remask: Callable[[list[str]], None]) -> JobClient:
        """The job on the bot's host: a runner process, the stage's temporary credentials on its stdin."""
        # The stage's own credentials for this job, named for CloudTrail: which job, who approved; always
        # temporary, and renewed before a step they would not outlast.
        session = f"rollback-job-{job_id}-{holder}"
        creds = self.credentials(plan.stage, session)
        secrets = list(self.mask.secrets)

        def remember(c: Credentials) -> None:  # masked in all the job shows
            secrets.extend(c.aws.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                                       "AWS_ACCESS_KEY_ID"))
            remask(secrets)

        link = self.artifacts.presign(plan.target, PACKAGE_LINK_SECONDS)  # a bearer link: masked like a key
        secrets.append(link)
        remember(creds)
        who = plan.account or creds.note or OWN_CREDENTIALS
        emit(Event("job", "output", f"AWS: {who}, session {session}"[:300]))
        source = self.source.for_dir(plan.service_dir) if plan.service_dir else self.source
        try:
            if not source.has(plan.target.commit):  # the runner reads the mirror and has no way to the remote
                source.fetch()
        except SourceError as exc:
            emit(Event("checkout", "failed", str(exc)))
            raise StepFailed("checkout", str(exc)) from exc
        return JobClient(
            self._spec(job_id, plan, workdir),
            # none of the bot's own secrets: the runner masks what it holds, the bot masks the rest
            Secrets(package_url=link, credentials=creds, env={
                v.name: self.host_env[v.ref] for v in self.variables(plan.stage).values()
                if v.kind == SourceKind.HOST_ENV and v.ref in self.host_env}),
            emit=emit, cancel=cancel, renew=lambda: self.credentials(plan.stage, session), on_secret=remember,
            on_start=lambda pid: self.store.update_job(job_id, child_pid=pid, child_start=process_start(pid)),
            background=self._later,
        )

    def _codebuild_job(self, job_id: int, plan: Plan, workdir: Path, runs_on: Executor, cancel: threading.Event,
                       emit, attach: Job | None) -> CodeBuildJob:
        """The job as a build of the stage's CodeBuild project: the bot's credentials (the stage's role)
        only start, follow and stop it; the build runs with the project's service role."""
        if any(v.kind == SourceKind.HOST_ENV for v in self.variables(plan.stage).values()):
            raise StepFailed("job", "a from_env deploy-time variable cannot reach a CodeBuild build (the bot's "
                                    "environment stays on its host): give it an ssm or secret source, or run "
                                    "this stage on the bot's host (docs/codebuild.md). Nothing was started")
        emit(Event("job", "output", f"runs on CodeBuild project {runs_on.project}, with the project's service role"))
        spec = self._spec(job_id, plan, workdir, remote=True)
        job = attach or self.store.job(job_id)
        # the start's token is the job's own: a start retried (by boto3, or after a crash) never starts two
        token = hashlib.sha256(f"{self.service}/{plan.stage}/{job_id}/{job.lease or job.created}".encode()
                               ).hexdigest()[:64]
        build_id, spec_text, sent = "", "", workdir / "codebuild-start.json"
        if attach is not None and attach.build_ref.startswith(STARTING):  # it died waiting for StartBuild's answer
            token = attach.build_ref[len(STARTING):]
            try:
                spec_text = sent.read_text(encoding="utf-8")
            except OSError as exc:
                raise StepFailed("job", f"the start of its CodeBuild build was not recorded ({exc.strerror}): look "
                                        f"in project {runs_on.project} for a build of it and stop it") from exc
        elif attach is not None:
            build_id = attach.build_ref

        def starting(text: str) -> None:
            workdir.mkdir(parents=True, exist_ok=True)
            sent.write_text(text, encoding="utf-8")
            self.store.update_job(job_id, build_ref=STARTING + token)

        return CodeBuildJob(
            spec, self.codebuild(plan.stage), runs_on.project, token, emit=emit, cancel=cancel,
            on_start=lambda build_id: self.store.update_job(job_id, build_ref=build_id),
            on_read=lambda log_token: self.store.update_job(job_id, log_token=log_token), on_starting=starting,
            build_id=build_id, log_token=attach.log_token if attach else "", spec_text=spec_text,
        )

    def _run(self, job_id: int, plan: Plan, cancel: threading.Event, holder: str, unfreeze: bool,
             attach: Job | None = None) -> None:
        workdir = self.config.data_dir / "jobs" / str(job_id)
        marker = InUse(plan.target.commit, plan.target.build_id, str(job_id), self.clock())
        state, reason, in_index, recorded = JobState.FAILED, "", False, None
        buffer = runs = None
        try:
            buffer = _OutputBuffer(self.store, job_id, self.log_path(job_id))
            masks = [self.mask.lines()]

            def emit(event: Event) -> None:
                self._emit(job_id, buffer, masks[0], event)

            def remask(secrets: list[str]) -> None:  # the job's credentials are secrets too
                masks[0] = Masker(secrets).lines()

            in_index = self._mark_in_use(plan.stage, marker, add=True, emit=emit)
            runs_on = self.runs_on(plan.stage)
            if runs_on.remote:
                client = self._codebuild_job(job_id, plan, workdir, runs_on, cancel, emit, attach)
            else:
                client = self._host_job(job_id, plan, workdir, cancel, emit, holder, remask)
            try:
                client.run()
            finally:
                runs = client.end.runs if client.end else None
            state = JobState.SUCCEEDED
            # verified: Lambda runs this package's code. An automatic rollback may go back to it later.
            self._guard("note the build seen live", lambda: self.store.note_seen_live(
                self.key(plan.stage), plan.target.commit, plan.target.build_id, plan.target.sha256,
                f"verified by job {job_id}"))
            recorded, stale = self._record_success(job_id, plan, holder, marker, unfreeze, emit)
            if recorded is Recorded.YES:
                in_index = False  # the success write dropped the in-use mark too
            elif recorded is Recorded.STALE:
                reason = stale
        except Cancelled as exc:
            state, reason = JobState.CANCELLED, f"{exc.step}: {exc.reason}" + self._stack_note(exc.step, plan, runs)
        except StepFailed as exc:
            reason = f"{exc.step}: {exc.reason}" + self._stack_note(exc.step, plan, runs)
        except UserError as exc:  # the stage's role could not be assumed: nothing ran
            reason = f"aws: {exc}"
        except Exception as exc:  # anything unexpected still ends the job cleanly and recorded
            reason = f"internal error: {exc.__class__.__name__}: {self.mask(str(exc))}"
        finally:
            # The lock goes first, on its own: nothing that can fail (a full disk, S3) may keep it.
            self._guard("release the lock", lambda: self.store.release_lock(self.key(plan.stage), job_id))
            self._guard("release the lease", lambda: self.drop_lease(job_id))
            with self._lock:
                self._cancels.pop(job_id, None)
            if state == JobState.SUCCEEDED and recorded is Recorded.PENDING:
                reason = ("deployed and verified, but index.json could not be updated: CI is NOT frozen and "
                          "no build is marked bad yet. rollback-bot keeps retrying and says when it lands")
            if buffer is not None:
                self._guard("store the last output", buffer.flush)
                self._guard("close the log file", buffer.close)
            self._guard("record the job's end", lambda: self.store.update_job(
                job_id, state=state, reason=reason, finished=self.clock(),
                recorded=None if recorded is None else int(recorded)))
            self._guard("audit the job's end", lambda: self.store.audit(
                holder, f"rollback.{state}", self.key(plan.stage), job_id, reason=reason, recorded=recorded))
            if in_index:
                self._guard("drop the in-use mark", lambda: self._mark_in_use(plan.stage, marker, add=False))
            final = Event("job", state, self.mask(reason))
            self._guard("record the final event",
                        lambda: self.store.add_event(job_id, "job", state, final.text))
            self._notify(job_id, final)
            with self._lock:
                self._subscribers.pop(job_id, None)  # the job is over: its subscribers end with it
            self._later(lambda: self._remove_workdir(workdir))
            if state == JobState.SUCCEEDED and recorded is Recorded.PENDING:
                self._later_thread(lambda: self._retry_record(job_id, plan, holder, marker, unfreeze))

    def _guard(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:
            log.exception("could not %s", what)

    def _later_thread(self, fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, name="rollback-record-retry", daemon=True).start()

    def _stack_note(self, step: str, plan: Plan, runs: LambdaRuns | None) -> str:
        """After a deploy that did not finish (or a verify that failed), what runs now: the stack's
        status, and which build Lambda's code is, so the card answers "what runs now?"."""
        if step not in ("deploy", "verify") or not plan.stack_name:
            return ""
        stack = self._stage_stack(plan.stage, plan.stack_name, plan.region or "us-east-1")
        note = f". Stack {plan.stack_name} is {stack.status()}"
        try:
            says = self._what_runs(plan, runs)
        except Exception as exc:  # a question we could not answer must not hide the failure itself
            says = f"what Lambda runs could not be read ({exc.__class__.__name__})"
        return f"{note}; {says}: check it before doing anything else"

    def _what_runs(self, plan: Plan, runs: LambdaRuns | None) -> str:
        """From what the runner read of one function (its CodeSha256 now, and the target's)."""
        if runs is None:
            return "what Lambda runs is unknown"
        if runs.actual is None:
            return f"Lambda has no function {runs.function}"
        is_target = runs.actual == runs.target
        is_live = False
        if plan.live is not None:
            member = self.artifacts.read_members(plan.live, [runs.member]).get(runs.member)
            is_live = member is not None and runs.actual == base64.b64encode(hashlib.sha256(member).digest()).decode()
        if is_live:  # a deploy that did not finish most often left the old build running
            same = "; the target has the same code" if is_target else ""
            return f"Lambda runs {plan.live.short} (build {plan.live.build_id}, live before the job{same})"
        if is_target:
            return f"Lambda runs {plan.target.short} (build {plan.target.build_id}, the target)"
        return "Lambda runs none of the stored builds compared (the target and the build live before)"

    def _spec(self, job_id: int, plan: Plan, workdir: Path, remote: bool = False) -> JobSpec:
        """All the runner is told about the job: no secrets (those go on its stdin). ``remote``: for a
        CodeBuild build, which has its own folders, environment and container, and reads the package itself."""
        c, box = self.config, None if remote else self.config.sandbox
        variables = self.variables(plan.stage)
        source = self.source.for_dir(plan.service_dir) if plan.service_dir else self.source
        return JobSpec(
            job_id=job_id, service=self.service, stage=plan.deploy_stage or plan.stage, target=plan.target,
            mirror=source.mirror_dir, service_dir=source.service_dir, workdir=workdir,
            plugin_cache=self.plugin_cache.for_account(plan.account).root, plugin_cache_max=c.plugin_cache_max,
            step_timeout=c.step_timeout, env={} if remote else {k: v for k, v in c.env.items() if k not in OWN_KEYS},
            deploy_template=c.deploy_template, install_template=c.install_template,
            bwrap=box.bwrap if box else "", hidden=box.hidden if box else (), copy_plugins=c.copy_plugins,
            variables=tuple(v for v in variables.values() if v.kind in (SourceKind.SSM, SourceKind.SECRET)),
            deploy_env={v.name: v.ref for v in variables.values() if v.kind == SourceKind.LITERAL},
            package_bucket=self.artifacts.bucket if remote else "",
        )

    def _remove_workdir(self, workdir: Path) -> None:
        if (workdir / "src").exists():
            self.source.remove_checkout(workdir / "src")
        shutil.rmtree(workdir, ignore_errors=True)

    def _mark_in_use(self, stage: str, marker: InUse, add: bool, emit=None) -> bool:
        """Record (or drop) the build a running job uses; True when the index took it."""
        def change(index: StageIndex) -> None:
            index.in_use = [u for u in index.in_use if u.job != marker.job]
            if add:
                index.in_use.append(marker)

        try:
            self.artifacts.update_index(stage, change)
            return True
        except ArtifactError as exc:  # only prune reads this; not worth failing a rollback over
            if emit is not None:
                emit(Event("job", "output", f"warning: could not record the job in index.json: {exc}"))
            return False

    def _write_result(self, job_id: int, plan: Plan, holder: str, marker: InUse, unfreeze: bool):
        """The result in index.json, dropping the job's in-use mark in the same write; only over the state
        the job started from (the live build it replaced, nothing live since it started), else StaleResult."""
        job = self.store.job(job_id)
        started = job.started if job and job.started else marker.since
        expected = plan.live.ident if plan.live else None

        def change(index: StageIndex):
            live = index.live
            if (live.ident if live else None) != expected or (live is not None and live.at > started):
                now = (f"{live.commit[:7]} (build {live.build_id}) went live {live.via} by {live.by or '?'} at "
                       f"{time.strftime('%H:%M:%S UTC', time.gmtime(live.at))}") if live else "nothing is live"
                raise StaleResult(now)
            index.in_use = [u for u in index.in_use if u.job != marker.job]
            if plan.forward:
                lifted = index.record_forward(plan.target, holder, self.clock(), unfreeze)
                return [], lifted
            reason = f"rolled back to {plan.target.label()} (job {job_id})"
            return index.record_rollback(plan.target, holder, self.clock(), reason), None

        return self.artifacts.update_index(plan.stage, change)

    @staticmethod
    def _stale_note(exc: StaleResult) -> str:
        return (f"deployed and verified, but not recorded: the stage moved on while the job ran ({exc.now}), so "
                "index.json was left as it is (nothing marked bad, CI not frozen by this job). Check what runs "
                "before doing anything else")

    def _record_success(self, job_id: int, plan: Plan, holder: str, marker: InUse, unfreeze: bool,
                        emit) -> tuple[Recorded, str]:
        """Record the result in index.json: YES; PENDING when it could not be written (the job then says so
        plainly, CI NOT frozen, and the write is retried in the background); STALE, with what was found,
        when the stage moved on while it ran (nothing is written, ever)."""
        try:
            marked, lifted = self._write_result(job_id, plan, holder, marker, unfreeze)
        except StaleResult as exc:
            note = self._stale_note(exc)
            emit(Event("job", "output", f"warning: {note}"))
            return Recorded.STALE, note
        except ArtifactError as exc:
            emit(Event("job", "output", f"warning: deployed, but index.json could not be updated: {exc}. "
                                        "CI is NOT frozen; rollback-bot keeps retrying"))
            return Recorded.PENDING, ""
        for art in marked:
            emit(Event("job", "output", f"marked bad: {art.label()}"))
        if plan.forward:
            emit(Event("job", "output", f"rolled forward to {plan.target.label()}; nothing marked bad"
                       + ("; CI freeze lifted" if lifted else "")))
        else:
            emit(Event("job", "output", f"stage {plan.stage} frozen for CI"))
        return Recorded.YES, ""

    def _retry_record(self, job_id: int, plan: Plan, holder: str, marker: InUse, unfreeze: bool) -> None:
        """Keep trying to record a finished job's result until it lands, then announce it."""
        delay = 1.0
        while not self._stopping.is_set():
            self._stopping.wait(delay)
            if self._stopping.is_set():
                return
            try:
                self._write_result(job_id, plan, holder, marker, unfreeze)
            except StaleResult as exc:  # someone rolled the stage since: their record stands, ours is dropped
                note = self._stale_note(exc)
                self._guard("record the stale result", lambda note=note: (
                    self.store.update_job(job_id, recorded=int(Recorded.STALE), reason=note),
                    self.store.add_event(job_id, "index", "stale", note),
                    self.store.audit("rollback-bot", "rollback.stale", self.key(plan.stage), job_id)))
                self._mark_in_use(plan.stage, marker, add=False)
                self._notify(job_id, Event("index", "stale", note))
                return
            except ArtifactError as exc:
                log.warning("job %s: index.json still cannot be updated: %s", job_id, self.mask(str(exc)))
                delay = min(delay * 2, RECORD_RETRY_MAX)
                continue
            note = ("index.json updated after retrying: " +
                    ("the roll forward is recorded" if plan.forward else "CI is now frozen and the undone builds "
                     "are marked bad"))
            self._guard("record the retried write", lambda note=note: (
                self.store.update_job(job_id, recorded=1, reason=note),
                self.store.add_event(job_id, "index", "recorded", note),
                self.store.audit("rollback-bot", "rollback.recorded", self.key(plan.stage), job_id)))
            self._notify(job_id, Event("index", "recorded", note))
            return

    # -- recovery --------------------------------------------------------------------------------

    def _runner_alive(self, job: Job) -> bool:
        """Whether the process that runs ``job`` is still there (this process knows its own jobs)."""
        if job.pid == self.pid and job.host == socket.gethostname():
            with self._lock:
                return job.id in self._cancels
        return runner_alive(job)

    def _stage_stack(self, stage: str, name: str, region: str) -> Stack:
        """A stack read with the stage's credentials (the bot's own unless the stage has a role)."""
        if self.aws_env == self._own_env:
            return self.stack_factory(name, region)
        return Stack(name, region, self.aws_env(stage, f"rollback-bot-check-{stage}"))

    def _interrupt(self, job: Job, by: str = "rollback-bot") -> Job:
        # the dead bot's runner, if it is still there: the same pid on this host, started at the same time
        if (job.child_pid and job.child_start and job.host == socket.gethostname()
                and process_start(job.child_pid) == job.child_start):
            kill_group(job.child_pid)
        status = "UNKNOWN"
        if job.stack_name:
            try:
                status = self._stage_stack(job.stage, job.stack_name, job.region or "us-east-1").status()
            except UserError as exc:  # the stage's role cannot be assumed now: say so, release anyway
                status = f"UNKNOWN ({exc})"[:300]
        reason = (f"interrupted: the bot stopped during the job; stack {job.stack_name or '?'} "
                  f"is {status}. Check the stage before doing anything else")
        self.store.update_job(job.id, state=JobState.INTERRUPTED, reason=reason, finished=self.clock(),
                              stack_status=status)
        self.store.add_event(job.id, "job", "interrupted", reason)
        self.store.release_lock(self.key(job.stage), job.id)
        self.free_lease(job)  # its lease in S3, if it still holds it (else it expires)
        self.store.audit(by, "rollback.interrupted", self.key(job.stage), job.id, stack_status=status)
        with contextlib.suppress(ArtifactError):
            self.artifacts.update_index(
                job.stage, lambda index, j=str(job.id): setattr(
                    index, "in_use", [u for u in index.in_use if u.job != j])
            )
        self._later(lambda: self._remove_workdir(self.config.data_dir / "jobs" / str(job.id)))
        return self.store.job(job.id)

    def recover(self, reattach: bool = False) -> list[Job]:
        """Mark jobs whose bot died as interrupted: stop their leftover processes, release their
        locks, remove their work folders, and record the stack's actual status, which someone must
        now check. Locks whose job is not running are released too. A job running as a CodeBuild build
        is not interrupted: with ``reattach`` (a bot that stays up) this process follows it on to its
        end (``followed`` lists them); without (a terminal command) it is left for the bot to take back."""
        recovered, self.followed = [], []
        for job in self.store.jobs(states=[JobState.RUNNING], limit=1000, service=self.service):
            if self._runner_alive(job):
                continue  # still running, here or in another live process on this machine
            if job.build_ref and not reattach:
                continue
            if job.build_ref and self._reattach(job):
                self.followed.append(self.store.job(job.id))
                continue
            recovered.append(self._interrupt(job))
        for lock in self.store.locks(self.service):
            job = self.store.job(lock.job_id)
            if job is None or job.state != JobState.RUNNING:
                self.store.release_lock(self.key(lock.stage), lock.job_id)
        self._resume_records()
        return recovered

    def _reattach(self, job: Job) -> bool:
        """Follow a CodeBuild job of a bot that is gone: its lease becomes this process's, its log is read on
        from where that bot got to. False when the lease is no longer the job's (its build is stopped: two
        deploys of one stage are what the lease prevents); the job is then interrupted."""
        try:
            if self.keeper is not None:
                self.keeper.adopt(job.stage, job.id, job.lease, self.pid)
        except (LeaseLost, LeaseUnavailable) as exc:
            log.error("job %s: cannot take back its lease (%s); stopping build %s", job.id, exc, job.build_ref)
            if not job.build_ref.startswith(STARTING):
                with contextlib.suppress(Exception):
                    self.codebuild(job.stage).stop(job.build_ref)
            return False
        plan = self._plan_of(job)
        self.store.update_job(job.id, host=socket.gethostname(), pid=self.pid, pid_start=self.pid_start)
        self.store.audit("rollback-bot", "rollback.reattached", self.key(job.stage), job.id, build=job.build_ref)
        cancel = threading.Event()
        holder = job.approved_by or job.requested_by or "rollback-bot"
        with self._lock:
            self._cancels[job.id] = cancel
            self._futures[job.id] = self.executor.submit(self._run, job.id, plan, cancel, holder,
                                                              bool(job.unfreeze), job)
            if self._cancel_watch is None:
                self._cancel_watch = threading.Thread(target=self._watch_cancels, daemon=True,
                                                      name=f"rollback-cancels-{self.service}")
                self._cancel_watch.start()
        log.info("job %s: following CodeBuild build %s again", job.id, job.build_ref)
        return True

    def _plan_of(self, job: Job) -> Plan:
        """A recorded job's plan again, from the stage's index (what the job's end writes needs)."""
        index = None
        with contextlib.suppress(ArtifactError):
            index = self.artifacts.read_index(job.stage)
        target = (index.find(job.target_commit, job.target_build) if index else None) or Artifact(
            commit=job.target_commit, build_id=job.target_build, key="", sha256="", size=0, created=0.0)
        live = None
        if job.live_commit:
            live = (index.find(job.live_commit, job.live_build) if index else None) or Artifact(
                commit=job.live_commit, build_id=job.live_build, key="", sha256="", size=0, created=0.0)
        return Plan(stage=job.stage, ref=target.commit, target=target, live=live, forward=job.forward,
                    stack_name=job.stack_name, region=job.region)

    def _resume_records(self) -> None:
        """Jobs that succeeded but whose result never reached index.json: keep trying after a restart."""
        for job in self.store.jobs(states=[JobState.SUCCEEDED], limit=200, service=self.service):
            if job.recorded != 0:
                continue
            try:
                index = self.artifacts.read_index(job.stage)
                target = index.find(job.target_commit, job.target_build)
            except ArtifactError:
                target = None
            if target is None:
                continue
            replaced = None
            if job.live_commit:  # what the job replaced: the result is written only over that
                replaced = index.find(job.live_commit, job.live_build) or Artifact(
                    commit=job.live_commit, build_id=job.live_build, key="", sha256="", size=0, created=0.0)
            plan = Plan(stage=job.stage, ref=target.commit, target=target, live=replaced, forward=job.forward)
            marker = InUse(target.commit, target.build_id, str(job.id), self.clock())
            holder = job.approved_by or job.requested_by or "rollback-bot"
            unfreeze = bool(job.unfreeze)
            self._later_thread(lambda j=job.id, p=plan, h=holder, m=marker, u=unfreeze:
                               self._retry_record(j, p, h, m, u))


def runner_stamp() -> dict:
    """What a running job records of the process that runs it, for ``runner_alive``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid())}


def runner_alive(job: Job) -> bool:
    """Whether another process on this machine that runs ``job`` is still there: same host, same
    pid, same start time (a reused pid is not the same process)."""
    pid = job.pid
    if job.host != socket.gethostname() or not pid or pid == os.getpid():
        return False
    if not _alive(pid):
        return False
    started = process_start(pid)
    return not (job.pid_start and started and started != job.pid_start)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The rollback service: the one door into the engine. Every face (the CLI, Slack, the App Home, the
demo) calls it with an ``Actor`` and renders the typed values it returns; nobody else reads indexes,
filters job rows, writes the bucket or writes audit entries.

A plan waits for a person, who is checked at the click; an approval approves exactly what the card
showed (bot.engine.approval, one path for one service and for the app). The policy is checked by the
gate (bot.engine.gate), for every action and every face, not in the Slack handlers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bot.adapters.artifacts import ArtifactError, PruneResult, PublishResult, validate_stage
from bot.adapters.lease import Held, LeaseUnavailable
from bot.adapters.plan_board import BoardUnavailable
from bot.adapters.source import local_commit, local_commits_between
from bot.adapters.store import plain_name
from bot.core.actor import Actor, Origin
from bot.core.events import EventStatus
from bot.core.jobs import APP, RUN_STATES, Job, JobState
from bot.core.keys import StageKey
from bot.core.lease import Lease, LeaseFormatError
from bot.core.plan_ticket import PlanRef, PlanTicket, TicketFormatError, TicketState
from bot.core.policy import Policy, PolicySource
from bot.core.records import AuditEntry, HeldLock, Watch
from bot.core.stage_index import Artifact, Mark, StageIndex
from bot.engine.app_service import AppRollbacks
from bot.engine.approval import Approved, OneService, approve
from bot.engine.build import Engine, Fleet, unsandboxed_warning
from bot.engine.gate import DEFAULT_TTL, Gate, RequestLimits
from bot.engine.pipeline import STEPS
from bot.engine.planner import Plan, UnknownStage, card_json, load_stage
from bot.engine.refusals import RefusalKind, Refused
from bot.engine.runner import CancelOutcome
from bot.engine.shared_plans import SharedPlans

log = logging.getLogger("rollback-bot.engine.service")

@dataclass
class Pending:
    job_id: int
    plan: Plan
    expires_at: float
    needs: str  # what approval needs, said on the card before anyone clicks
    policy_configured: bool
    running: Job | None = None  # a job running on the stage when the plan was made
    ref: PlanRef | None = None  # what its buttons name: the plan every replica shares


@dataclass(frozen=True)
class Status:
    running: list[Job]
    freezes: dict[StageKey, Mark]
    hidden: int = 0  # stages left out: the policy keeps them to other channels
    unreadable: tuple[str, ...] = ()  # "api dev: why" for each index that could not be read (the rest shown)


@dataclass(frozen=True)
class Overview:
    """The App Home: each stage's index and lock holder, recent runs, and whether a policy is set."""

    stages: list[tuple[StageIndex, HeldLock | None]]
    jobs: list[Job]
    policy_configured: bool
    several: bool = False  # several services: rows name theirs
    watches: tuple | list = ()  # the alarm watch's running watches (Watch)
    parts: dict[int, list[Job]] | None = None  # each app rollback's services, by the app's job id
    hidden: int = 0  # stages left out: the policy keeps them to their channels
    unsandboxed: str = ""  # why jobs run without a sandbox, said at the top ("" in one)
    unreadable: tuple[str, ...] = ()  # "api dev: why" for each index that could not be read (the rest shown)


@dataclass(frozen=True)
class FreezeCheck:
    """What CI is told before it deploys: empty ``problems`` means go ahead."""

    stage: str
    commit: str
    problems: list[str]


@dataclass(frozen=True)
class DeployNotice:
    """What a deploy notification says: the stage's index, the build now live, the one live before it,
    and the commits between them (from the git checkout CI runs in, when there is one)."""

    index: StageIndex
    live: Artifact
    previous: Artifact | None
    commits: list


@dataclass(frozen=True)
class Recovered:
    """What a start-up found cut short by a crash: services' jobs and app rollbacks, now interrupted."""

    jobs: list[Job] = field(default_factory=list)
    apps: list[Job] = field(default_factory=list)
    followed: list[Job] = field(default_factory=list)  # CodeBuild jobs still running, followed from here on


@dataclass(frozen=True)
class Orphan:
    """A job whose bot stopped renewing its lease (a replica killed, a machine gone), found by this replica,
    the one of all that says so: its card and who held it."""

    key: StageKey
    lease: Lease
    ticket: PlanTicket


class RollbackService:
    def __init__(self, engine: Engine | Fleet, policy: Policy | PolicySource, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time, limits: RequestLimits | None = None):
        self.fleet = engine if isinstance(engine, Fleet) else Fleet.of_one(engine)
        settings = self.fleet.settings
        self.policies = policy if isinstance(policy, PolicySource) else PolicySource(policy)
        self.gate = Gate(self.fleet, self.policies, clock, ttl, limits or RequestLimits())
        self.shared = SharedPlans(self.gate)  # pending plans in S3: a click on any replica approves once
        self.apps = AppRollbacks(self.gate, settings.app_concurrency, settings.app_on_failure, self.shared)

    @property
    def policy(self) -> Policy:
        return self.policies.current()

    @property
    def clock(self) -> Callable[[], float]:
        return self.gate.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:  # tests move time on
        self.gate.clock = clock

    @property
    def engine(self) -> Engine:
        """The default service's engine (the only one, or ROLLBACK_SERVICE)."""
        return self.fleet.default

    @property
    def services(self) -> list[str]:
        return self.fleet.names

    @property
    def several(self) -> bool:
        return self.fleet.several

    @property
    def store(self):
        return self.fleet.store  # opened on first use: CI's read-only commands never create it

    def key(self, stage: str, service: str | None = None) -> StageKey:
        """The key of a stage of a service this bot serves; without a service, the default one."""
        return self.gate.key(stage, service)

    def job(self, job_id: int) -> Job | None:
        return self.store.job(job_id)

    def runner_of(self, job_id: int):
        """The job runner of the service a job belongs to (to follow its events)."""
        job = self.store.job(job_id)
        return (self.gate.engine(self.gate.job_key(job)) if job else self.engine).jobs

    def account(self, key: StageKey) -> str:
        """Where a stage's AWS work happens, for cards and listings."""
        return self.gate.engine(key).accounts.describe(key.stage) if self.fleet.shared.uses_accounts else ""

    def may_view(self, key: StageKey, actor: Actor) -> None:
        """Listing and history follow the stage's channel rule too."""
        stage = self.gate.stage(key)
        self.gate.check(self.policy.may_act_in(stage, actor.channel, key.service), actor.user, "view", key)

    # -- starting, every face --------------------------------------------------------------------

    def recover(self, reattach: bool = False) -> Recovered:
        """Jobs and app rollbacks a crash cut short: each service's runner first (it stops their
        processes, releases their locks and records the stack's status), then the apps, which say who
        is where. Every face calls this once when it starts. ``reattach``: a face that stays up (the
        Slack bot) follows the CodeBuild builds of jobs whose bot died on to their end."""
        runners = [one.jobs for one in self.fleet.engines.values()]
        jobs = [j for runner in runners for j in runner.recover(reattach)]
        said = [j for j in jobs if self.shared.claim_interrupted(j)]  # another replica may have said it already
        return Recovered(said, self.apps.recover(), [j for runner in runners for j in runner.followed])

    def orphans(self) -> list[Orphan]:
        """Jobs of any replica whose lease ran out while they held it (their bot died without letting go):
        each is claimed in its plan's ticket by exactly one replica, this one when it returns it, and its
        lease is let go so the stage is free at once. Run with the housekeeping."""
        found = []
        for name, engine in self.fleet.engines.items():
            try:
                stages = engine.artifacts.stages()
            except ArtifactError:
                continue
            for stage in stages:
                try:
                    lease, etag = engine.leases.read(stage)
                    if lease is None or not lease.expired(engine.leases.clock()) or not lease.plan:
                        continue
                    board = engine.plans if engine.plans.read(stage, lease.plan) else self.shared.board(APP)
                    won, ticket = board.interrupted(stage, lease.plan, self.shared.host)  # an app's part: the app's
                    if won and ticket is not None:
                        engine.leases.release(Held(lease, etag))
                        self.gate.audit("rollback-bot", "rollback.interrupted", StageKey(name, stage), None,
                                        on=lease.host, job=lease.job, plan=lease.plan)
                        found.append(Orphan(StageKey(name, stage), lease, ticket))
                except (LeaseUnavailable, LeaseFormatError, BoardUnavailable, TicketFormatError):
                    continue  # this stage, this round: the next round asks again
        return found

    def housekeeping(self) -> list[Job]:
        """Close plans whose buttons expired (returned, so their cards can say so) and forget what is past
        retention. Whatever the face: the Slack bot runs it every 30 s, the terminal at each rollback."""
        swept = self.sweep_expired()
        self.store.prune(self.clock() - self.fleet.settings.retention_days * 86400)
        return swept

    # -- what CI writes --------------------------------------------------------------------------

    def publish(self, key: StageKey, commit: str, package: Path, build_id: str | None, author: str | None,
                message: str | None, deployed: bool, by: str) -> PublishResult:
        """Store a package for a stage (and record it live with ``deployed``). Inside the repository a short
        SHA is enough, and author and message default to git's."""
        info = local_commit(commit.strip())
        commit = info.sha if info else commit.strip()
        author = author if author is not None else (info.author if info else "")
        message = message if message is not None else (info.subject if info else "")
        return self.gate.engine(key).artifacts.publish(key.stage, commit, package, build_id=build_id, author=author,
                                                       message=message, deployed=deployed, by=by)

    def mark_deployed(self, key: StageKey, commit: str, build_id: str | None, by: str) -> tuple[Artifact, bool]:
        info = local_commit(commit.strip())
        return self.gate.engine(key).artifacts.mark_deployed(key.stage, info.sha if info else commit, build_id, by=by)

    def deploy_notice(self, key: StageKey) -> DeployNotice | None:
        """What went live on a stage, for its deploy notification; None when nothing live is recorded."""
        index = self.index(key)
        live = index.live_artifact()
        if live is None or index.live is None:
            return None
        previous = next((index.find(*h.ident) for h in index.history[1:] if h.commit != live.commit), None)
        commits = local_commits_between(previous.commit, live.commit) if previous else []
        return DeployNotice(index, live, previous, commits)

    def note_notice(self, key: StageKey, notice: DeployNotice, channel: str, ts: str) -> None:
        """Where the notification was posted, kept on the live record so any machine can edit it later."""
        self.gate.engine(key).artifacts.note_notice(key.stage, notice.index.live, channel, ts)

    def prune(self, key: StageKey, keep: int, by: str, dry_run: bool = False) -> PruneResult:
        """Delete all but the newest ``keep`` builds (never the live, last known-good or in-use one);
        a real prune is in the audit trail, with what it removed."""
        result = self.gate.engine(key).artifacts.prune(self.gate.stage(key), keep, dry_run=dry_run)
        if not dry_run:
            self.gate.audit(by, "prune", key, None, keep=keep, removed=[a.label() for a in result.removed],
                            failed_deletes=list(result.failed_deletes))
        return result

    # -- plans -----------------------------------------------------------------------------------

    def request(self, key: StageKey, ref: str, actor: Actor) -> Pending:
        """Check the requester and their limits, work out the plan, and record it as a pending job
        together with what its card shows. At a terminal the typed confirmation will be the approval
        (no second person can be asked for there), so the operator must also be an approver."""
        gate, stage = self.gate, self.gate.stage(key)
        engine = gate.engine(key)
        policy = self.policy
        gate.check(policy.may_request(stage, actor.user, actor.channel, actor.groups_of, key.service), actor.user,
                   "request", key)
        if actor.origin is Origin.TERMINAL:
            gate.check(policy.may_approve(stage, actor.user, "", None, service=key.service), actor.user, "approve",
                       key)
        now = self.clock()
        gate.within_limits(actor.user, key)
        plan = engine.plan(stage, ref)
        job = self.shared.create(  # any replica may get the click on its card: the plan is in S3 too
            service=key.service, stage=stage, target_commit=plan.target.commit, target_build=plan.target.build_id,
            live_commit=plan.live.commit if plan.live else "", live_build=plan.live.build_id if plan.live else "",
            requested_by=actor.user, origin=str(actor.origin), channel=actor.channel or "",
            created=now, expires=now + gate.ttl, stack_name=plan.stack_name, region=plan.region,
            plan_json=card_json(plan, ref), policy=gate.policy_source,
        )
        job_id = job.id
        gate.audit(actor.user, "request", key, job_id, target=plan.target.label(), sha256=plan.target.sha256)
        running = engine.jobs.running_job(stage)
        return Pending(job_id, plan, now + gate.ttl, policy.approval_needs(stage, actor.user, key.service),
                       policy.configured, running, job.plan_ref)

    def attach_message(self, job_id: int, channel: str, ts: str, permalink: str = "") -> None:
        self.store.update_job(job_id, channel=channel, message_ts=ts, permalink=permalink)
        try:
            self.shared.attach(self.store.job(job_id))
        except (BoardUnavailable, TicketFormatError) as exc:
            log.warning("job %s: its card's place could not be recorded in S3: %s", job_id, exc)

    def ran_here(self, job_id: int, ref: PlanRef | None) -> int:
        """The job a button on a running or finished card names, which only the replica that ran it knows."""
        if ref is None or not ref.uid:
            return job_id
        job = self.store.job_by_uid(ref.uid)
        if job is None or job.state is JobState.PENDING:
            raise Refused("That rollback ran on another replica of the bot, which keeps its record; Slack sent this "
                          "click here. Click again (it may reach that one), or ask there.", RefusalKind.GONE)
        return job.id

    def resolve(self, job_id: int, ref: PlanRef | None) -> int:
        """The job a button names, in this bot's store: a plan another replica posted is taken from S3."""
        return self.shared.resolve(job_id, ref)

    def approve(self, job_id: int, actor: Actor, unfreeze: bool = False,
                card: tuple[str, str] | None = None) -> Approved:
        """Start a pending plan, one service's or the whole app's, if the plan now is the plan its card
        showed. Exactly one of several concurrent clicks starts it. At a terminal the operator who
        requested it approves it (the typed confirmation). ``card`` is the (channel, ts) of the message
        clicked in Slack: it must be the job's own card, so a button copied elsewhere approves nothing."""
        job = self.store.job(job_id)
        if job is not None and job.service == APP:
            return self.apps.approve(job_id, actor, card)
        return approve(self.gate, job_id, actor, OneService(), unfreeze=unfreeze,
                       terminal=actor.origin is Origin.TERMINAL, card=card, shared=self.shared)

    def withdraw(self, job_id: int, actor: Actor) -> Job:
        """Cancel a pending plan: its requester or anyone who may approve it."""
        gate, job = self.gate, self.store.job(job_id)
        if job is None or job.state != JobState.PENDING:
            raise Refused("This plan is no longer waiting for approval.", RefusalKind.CLOSED)
        key = gate.job_key(job)
        rule = None if key.service == APP else key.service  # the app: the stage's own rule
        gate.check(self.policy.may_act_in(key.stage, actor.channel, rule), actor.user, "withdraw", key, job_id)
        if actor.user != job.requested_by:
            decision = self.policy.may_approve(key.stage, actor.user, job.requested_by, actor.channel,
                                               actor.groups_of, rule)
            if not decision.allowed:
                gate.refuse(actor.user, "withdraw", key, job_id, "Only the requester or an approver may cancel it.")
        self.shared.close(job, TicketState.WITHDRAWN, actor.user)  # first in S3: no replica approves it after
        if not self.store.claim(job_id, JobState.PENDING, JobState.WITHDRAWN, finished=self.clock(),
                                cancelled_by=actor.user):
            raise Refused("This plan is no longer waiting for approval.", RefusalKind.CLOSED)
        gate.audit(actor.user, "withdraw", key, job_id)
        return self.store.job(job_id)

    def sweep_expired(self) -> list[Job]:
        """Close plans whose buttons expired; returns them so their cards can say so."""
        now = self.clock()
        swept = []
        for job in self.store.jobs(states=[JobState.PENDING], limit=500):
            if job.expires >= now:
                continue
            elsewhere = self.shared.approved_elsewhere(job)
            if elsewhere is not None:  # another replica has its card now: nothing to say on it from here
                self.store.claim(job.id, JobState.PENDING, JobState.WITHDRAWN, finished=now,
                                 reason=f"{elsewhere.state} on another replica ({plain_name(elsewhere.closed_on)})")
                continue
            with contextlib.suppress(Refused):
                self.shared.close(job, TicketState.EXPIRED, "rollback-bot")
            if self.store.claim(job.id, JobState.PENDING, JobState.EXPIRED, finished=now):
                self.gate.audit("rollback-bot", "plan.expired", self.gate.job_key(job), job.id)
                swept.append(self.store.job(job.id))
        return swept

    # -- following jobs --------------------------------------------------------------------------

    def follow(self, job_id: int, listener) -> Callable[[], None]:
        """Call ``listener`` with a service job's events until it ends (subscribe before approving, so no
        event is missed); an app rollback's faces listen to ``apps.listeners``. Returns an unsubscribe."""
        return self.runner_of(job_id).subscribe(job_id, listener)

    def on_job_events(self, listener) -> None:
        """Call ``listener(job_id, event)`` with every event of every service's jobs (the Slack bot's
        late "index.json updated" announcements)."""
        for one in self.fleet.engines.values():
            one.jobs.listeners.append(listener)

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it has ended (or after ``timeout``), one service's or an app's."""
        job = self.store.job(job_id)
        if job is not None and job.service == APP:
            return self.apps.wait(job_id, timeout)
        self.runner_of(job_id).wait(job_id, timeout)
        return self.job(job_id)

    def steps(self, job_id: int) -> dict[str, tuple[str, float | None]]:
        """Each step of a job's checklist as it stands: (status, duration)."""
        return {e["step"]: (e["status"], e["duration"]) for e in self.store.events(job_id) if e["step"] in STEPS}

    def current_step(self, job_id: int) -> str:
        """The step a running job is on ("starting" before the first)."""
        started = [e["step"] for e in self.store.events(job_id) if e["status"] == EventStatus.STARTED]
        return started[-1] if started else "starting"

    def output(self, job_id: int) -> list[str]:
        return self.store.output(job_id)

    def output_after(self, job_id: int, after: int) -> list[tuple[int, str]]:
        """A job's output lines after row ``after``, as (row, line): what a thread has not shown yet."""
        return self.store.output_after(job_id, after)

    def log_path(self, job_id: int) -> Path:
        return self.runner_of(job_id).log_path(job_id)

    def log_tail(self, job_id: int, lines: int = 20) -> list[str]:
        return self.store.log_tail(job_id, lines)

    def shutdown(self) -> None:
        self.fleet.shutdown()

    # -- running jobs ----------------------------------------------------------------------------

    def _may_cancel(self, job: Job, actor: Actor) -> None:
        gate, key = self.gate, self.gate.job_key(job)
        rule = None if key.service == APP else key.service  # stopping the app: the stage's own rule
        gate.check(self.policy.may_act_in(key.stage, actor.channel, rule), actor.user, "cancel", key, job.id)
        if actor.user not in (job.requested_by, job.approved_by):
            decision = self.policy.may_approve(key.stage, actor.user, job.requested_by, actor.channel,
                                               actor.groups_of, rule)
            if not decision.allowed:
                gate.refuse(actor.user, "cancel", key, job.id, "Only the requester, the approver or an "
                                                                  "approver may cancel a running rollback.")

    def cancel_job(self, job_id: int, actor: Actor, ref: PlanRef | None = None) -> str:
        """Cancel one job (the one a Cancel button was drawn for), never whatever runs now. ``ref``: the
        plan every replica shares; a job another replica runs is asked to stop through its ticket."""
        if ref is not None and ref.uid:
            local = self.store.job_by_uid(ref.uid)
            if local is None or local.state is JobState.PENDING:  # its card's plan was approved on another replica
                return self._cancel_elsewhere(ref, actor)
            job_id = local.id
        job = self.store.job(job_id)
        if job is None:
            raise Refused("That job no longer exists.", RefusalKind.GONE)
        if job.state != JobState.RUNNING:
            raise Refused(f"Job {job_id} already ended ({job.state}); nothing was cancelled.", RefusalKind.CLOSED)
        self._may_cancel(job, actor)
        if job.service == APP:
            return self.apps.cancel(job_id, actor.user)
        outcome = self.gate.engine(self.gate.job_key(job)).jobs.cancel(job_id, actor.user)
        if outcome is CancelOutcome.RUNNER_GONE:
            return (f"Job {job_id}'s bot process is gone: the job is marked interrupted and the stage's lock "
                    "released. Check the stack before doing anything else.")
        if outcome is CancelOutcome.ASKED:
            return (f"Cancelling job {job_id}: the rollback-bot process that runs it (pid {job.pid}) stops its "
                    "processes within a few seconds.")
        if outcome is CancelOutcome.ENDED:
            raise Refused(f"Job {job_id} already ended; nothing was cancelled.", RefusalKind.CLOSED)
        return f"Cancelling job {job_id}: its processes are being stopped."

    def _cancel_elsewhere(self, ref: PlanRef, actor: Actor) -> str:
        """A job another replica runs: asked to stop through its plan's ticket, if a lease of it is still held
        (an app rollback's: any of its services')."""
        try:
            ticket = self.shared.ticket(ref)
            key = self.shared.key_of(ref)
            engines = self.fleet.engines.values() if key.service == APP else [self.gate.engine(key)]
            leases = [lease for e in engines for lease in [e.leases.current(key.stage)]
                      if lease is not None and lease.plan == ref.uid]
        except (BoardUnavailable, TicketFormatError, LeaseFormatError, LeaseUnavailable) as exc:
            raise Refused(f"{exc}; nothing was cancelled", RefusalKind.BUSY) from exc
        if ticket is None or ticket.state is not TicketState.APPROVED or not leases:
            raise Refused("That rollback is not running any more; nothing was cancelled.", RefusalKind.CLOSED)
        lease = leases[0]
        self._may_cancel(Job(id=lease.job, stage=key.stage, state=JobState.RUNNING, service=key.service,
                             requested_by=ticket.requested_by, approved_by=ticket.closed_by), actor)
        self.shared.ask_cancel(ref, actor.user)
        self.gate.audit(actor.user, "rollback.cancel", key, None, via=f"ticket {ref.uid}", host=lease.host)
        return (f"Cancelling it: the replica on {plain_name(lease.host)} that runs it (job {lease.job} there) stops "
                "its processes within a few seconds.")

    def cancel_running(self, key: StageKey, actor: Actor) -> str:
        stage = self.gate.stage(key)
        job = self.gate.engine(key).jobs.running_job(stage)
        if job is None:
            self.gate.check(self.policy.may_act_in(stage, actor.channel, key.service), actor.user, "cancel", key)
            raise Refused(f"No rollback of `{stage}` is running here.", RefusalKind.GONE)
        return self.cancel_job(job.id, actor)

    def cancel_in_stage(self, stage: str, actor: Actor) -> str:
        """`/rollback cancel prod` on a bot of several services: the app rollback running in the stage, or
        the one service's rollback running there. Several services' own rollbacks are named, not guessed."""
        stage = self.gate.stage(StageKey(APP, stage))
        running = self.running(stage)
        app = next((j for j in running if j.is_app), None)
        if app is not None:
            return self.cancel_job(app.id, actor)
        alone = [j for j in running if not j.app_id]
        if len(alone) == 1:
            return self.cancel_job(alone[0].id, actor)
        self.gate.check(self.policy.may_act_in(stage, actor.channel), actor.user, "cancel", StageKey(APP, stage))
        if not alone:
            raise Refused(f"No rollback of `{stage}` is running here.", RefusalKind.GONE)
        named = ", ".join(f"`{j.service}` (job {j.id})" for j in sorted(alone, key=lambda j: j.service))
        raise Refused(f"Several rollbacks are running in `{stage}`: {named}. Say which one: "
                      f"`/rollback cancel {sorted(alone, key=lambda j: j.service)[0].service} {stage}`.",
                      RefusalKind.BUSY)

    def unfreeze(self, key: StageKey, actor: Actor) -> str | None:
        stage = self.gate.stage(key)
        self.gate.check(self.policy.may_approve(stage, actor.user, "", actor.channel, actor.groups_of, key.service),
                        actor.user, "unfreeze", key)
        was = self.gate.engine(key).artifacts.unfreeze(stage)
        self.gate.audit(actor.user, "unfreeze", key, None, was=was.reason if was else None)
        return was.reason if was else None

    # -- what people read ------------------------------------------------------------------------

    def listing(self, key: StageKey, actor: Actor) -> StageIndex:
        self.may_view(key, actor)
        return self.builds(key)

    def index(self, key: StageKey) -> StageIndex:
        """A stage's index as CI reads it (S3 only; an unknown stage is simply empty)."""
        stage = self.gate.stage(key)
        return self.gate.engine(key).artifacts.read_index(stage)

    def builds(self, key: StageKey) -> StageIndex:
        """A stage's index for a person reading it: a stage with no builds is a typo until shown
        otherwise, and the refusal names the closest known stage."""
        return load_stage(self.gate.engine(key).artifacts, self.gate.stage(key))

    def show(self, key: StageKey, ref: str) -> tuple[StageIndex, Artifact]:
        index = self.builds(key)
        return index, index.resolve(ref)

    def stage_hint(self, key: StageKey) -> str:
        """For CI's check-freeze: "" when the stage has builds (or no close name), else what it may have meant."""
        try:
            self.builds(key)
        except UnknownStage as exc:
            return str(exc) if "did you mean" in str(exc) else ""
        return ""

    def history(self, key: StageKey, actor: Actor, limit: int = 20) -> list[Job]:
        """The stage's runs, newest first: plans that never ran are not history."""
        self.may_view(key, actor)
        return self._runs(key, limit)

    def history_of(self, stage: str, key: StageKey | None, actor: Actor, limit: int = 20) -> list[Job]:
        """One service's runs on a stage, or (``key`` None, a bot of several services) every service's."""
        if key is not None:
            return self.history(key, actor, limit)
        stage = validate_stage(stage)
        for name in self.fleet.names:
            self.may_view(StageKey(name, stage), actor)
        rows = self.store.jobs(stage=stage, states=[str(s) for s in RUN_STATES], limit=limit, app_parts=False)
        return rows

    def watches(self, key: StageKey) -> list[Watch]:
        """The alarm watch's running watches of a stage."""
        return [w for w in self.store.watches() if (w.service, w.stage) == (key.service, key.stage)]

    def parts(self, app_id: int) -> list[Job]:
        """The services' jobs of an app rollback."""
        return self.apps.parts(app_id)

    def stage_names(self) -> list[str]:
        """Every stage any service has builds in (for help)."""
        return sorted({s for e in self.fleet.engines.values() for s in e.artifacts.stages()})

    def _runs(self, key: StageKey | None, limit: int) -> list[Job]:
        rows = self.store.jobs(stage=key.stage if key else None, service=key.service if key else None,
                               states=[str(s) for s in RUN_STATES], limit=limit, app_parts=key is not None)
        return rows

    def indexes(self, stage: str | None = None) -> list[StageIndex]:
        """Every (service, stage) index this bot serves (or one stage's, across services), read
        concurrently: each is one request, answered 304 when unchanged. One that fails raises."""
        found, problems = self.readable_indexes(stage)
        if problems:
            raise ArtifactError(problems[0][1])
        return found

    def readable_indexes(self, stage: str | None = None) -> tuple[list[StageIndex], list[tuple[StageKey, str]]]:
        """The same, each read on its own: the indexes that could be read, and (key, why) for the others, so
        one malformed folder or index never hides every other stage."""
        engines = list(self.fleet.engines.values())

        def stages_of(e):
            try:
                return [stage] if stage else e.artifacts.stages(), ""
            except Exception as exc:
                return [], str(exc)

        def read(pair):
            try:
                return pair[0].artifacts.read_index(pair[1]), ""
            except Exception as exc:
                return None, str(exc)

        with ThreadPoolExecutor(max_workers=min(16, len(engines))) as pool:
            stage_lists = list(pool.map(stages_of, engines))
            problems = [(StageKey(e.service, "*"), why) for e, (_, why) in zip(engines, stage_lists, strict=True)
                        if why]
            pairs = [(e, s) for e, (stages, _) in zip(engines, stage_lists, strict=True) for s in stages]
            results = list(pool.map(read, pairs))
        found = [index for index, _ in results if index is not None]
        problems += [(StageKey(e.service, s), why) for (e, s), (index, why) in zip(pairs, results, strict=True)
                     if index is None]
        for key, why in problems:
            log.warning("cannot read %s %s: %s", key.service, key.stage, why[:300])
        return found, problems

    def _unreadable(self, problems, channel: str | None) -> tuple[str, ...]:
        def name(key: StageKey) -> str:
            return f"{key.service} {key.stage}" if self.several else key.stage

        return tuple(f"{name(k)}: {why[:200]}" for k, why in problems
                     if channel == "" or k.stage == "*" or self._shown_in(k.stage, k.service, channel))

    def _shown_in(self, stage: str, service: str, channel: str | None) -> bool:
        """Whether a stage's state may be shown in ``channel``; ``None`` is the App Home, which is in no
        channel: a stage the policy keeps to some channels is shown only there."""
        policy = self.policy
        names = self.fleet.names if service == APP else [service]
        for name in names:
            rule = policy.rule(stage, name)
            if rule is None or (rule.channels is not None and (channel is None or channel not in rule.channels)):
                return False
        return True

    def running(self, stage: str | None = None) -> list[Job]:
        """The jobs running now on this machine (sqlite only: no S3 request)."""
        return [j for j in self.store.jobs(states=[JobState.RUNNING]) if stage in (None, j.stage)]

    def status(self, channel: str | None = "") -> Status:
        """What runs and what is frozen. In Slack (``channel``) only the stages the policy lets that
        channel see; ``""`` (the terminal, on the bot's host) everything."""
        running = self.running()
        indexes, problems = self.readable_indexes()
        freezes = {StageKey(i.service, i.stage): i.freeze for i in indexes if i.freeze}
        unreadable = self._unreadable(problems, channel)
        if channel == "":
            return Status(running, freezes, unreadable=unreadable)
        shown_jobs = [j for j in running if self._shown_in(j.stage, j.service, channel)]
        shown_freezes = {k: m for k, m in freezes.items() if self._shown_in(k.stage, k.service, channel)}
        hidden = {(j.service, j.stage) for j in running if j not in shown_jobs} | {
            (k.service, k.stage) for k in freezes if k not in shown_freezes}
        return Status(shown_jobs, shown_freezes, len(hidden), unreadable)

    def overview(self) -> Overview:
        """The App Home: only the stages that no policy keeps to particular channels."""
        indexes, problems = self.readable_indexes()
        shown = [i for i in indexes if self._shown_in(i.stage, i.service, None)]
        stages = [(i, self.store.lock_of(StageKey(i.service, i.stage))) for i in shown]
        runs = [j for j in self._runs(None, 30) if self._shown_in(j.stage, j.service, None)][:10]
        watches = [w for w in self.store.watches(limit=50) if self._shown_in(w.stage, w.service, None)][:20]
        parts = {j.id: self.apps.parts(j.id) for j in runs if j.is_app}
        return Overview(stages, runs, self.policy.configured, self.several, watches, parts,
                        len(indexes) - len(shown), self.unsandboxed(), self._unreadable(problems, None))

    def unsandboxed(self) -> str:
        """Why jobs run without a sandbox ("" when they run in one). Raises SandboxUnavailable where
        ROLLBACK_SANDBOX=required cannot be met: a bot that must not run jobs unsandboxed says so at start-up."""
        why = self.engine.shared.unsandboxed
        return unsandboxed_warning(why) if why else ""

    def stage_overview(self, stage: str, actor: Actor) -> list[tuple[StageIndex, str]]:
        """``/rollback prod`` with several services: each service's index of the stage, and where it runs."""
        stage = validate_stage(stage)
        for name in self.fleet.names:
            self.may_view(StageKey(name, stage), actor)
        found = [i for i in self.indexes(stage) if i.artifacts]
        if not found:
            load_stage(self.engine.artifacts, stage)  # no service has the stage: say which stages exist
        return [(i, self.account(StageKey(i.service, stage))) for i in found]

    def check_freeze(self, key: StageKey, commit: str = "") -> FreezeCheck:
        """For CI: may this stage be deployed (with this commit)? Reads S3 only."""
        stage = self.gate.stage(key)
        index = self.gate.engine(key).artifacts.read_index(stage)
        flags = f" --service {key.service}" if self.several else ""
        problems = []
        what = f"{key.service} on stage {stage}" if self.several else f"stage {stage}"
        try:  # a rollback that holds the stage: CI must wait for it, whichever machine runs it
            lease = self.gate.engine(key).leases.current(stage)
        except LeaseFormatError as exc:
            lease = None
            problems.append(f"{what} cannot be checked: {exc}. Make sure no rollback runs, then delete it")
        if lease is not None:
            problems.append(f"rollback in progress on {what}: {lease.describe(plain_name)}. Deploy after it "
                            "finishes (it freezes CI if it rolls back)")
        if index.freeze:
            f = index.freeze
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(f.at))
            slash = f"{key.service} {stage}" if self.several else stage
            problems.append(f"{what} is frozen by {f.by or 'unknown'} {when}: {f.reason}. "
                            f"Lift it with `rollback-bot unfreeze{flags} {stage}` or `/rollback unfreeze {slash}`")
        commit = commit.strip().lower()
        if commit:
            mark = index.bad_mark_for(commit)
            if mark:
                problems.append(f"commit {commit[:12]} is marked bad on {stage} by {mark.by} "
                                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(mark.at))}: {mark.reason}. "
                                "Deploy a fixed commit instead")
        return FreezeCheck(stage, commit, problems)

    def audit(self, since: float, key: StageKey | None = None) -> list[AuditEntry]:
        """The audit trail from ``since`` on (every request, approval, refusal, run and unfreeze)."""
        if key:
            self.gate.stage(key)
        return self.store.audit_since(since, key)

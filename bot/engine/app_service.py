"""App rollbacks for every face: request one for a stage, approve it under the strictest policy of the
services it moves (through the one approval path, bot.engine.approval), follow it, cancel it, and roll
its finished services forward again.

Knows nothing of Slack, nor of the rollback service that holds it as ``.apps``: it shares its gate.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bot.adapters.store import StageBusy, plain_name
from bot.core.actor import Actor, Origin
from bot.core.cards import AppCard
from bot.core.jobs import APP, Job, JobState
from bot.core.keys import StageKey
from bot.core.plan_ticket import PlanRef
from bot.engine.app import AppPlan, AppRun, app_card_json, make_app_plan, skip_unstarted, who_is_where
from bot.engine.approval import Approved, approve
from bot.engine.gate import Gate
from bot.engine.planner import card_json, summary_changes
from bot.engine.refusals import RefusalKind, Refused
from bot.engine.runner import runner_alive, runner_stamp
from bot.engine.shared_plans import SharedPlans


@dataclass
class PendingApp:
    job_id: int
    app: AppPlan
    expires_at: float
    needs: str
    policy_configured: bool
    busy: list[str]  # "api (job 7, started by U…)": services whose stage runs a job now
    ref: PlanRef | None = None  # what its buttons name: the plan every replica shares


class AppRollbacks:
    def __init__(self, gate: Gate, concurrency: int = 4, on_failure: str = "finish",
                 shared: SharedPlans | None = None):
        self.gate = gate
        self.shared = shared or SharedPlans(gate)  # the app's plans in S3, as a service's
        self.concurrency = concurrency
        self.on_failure = on_failure
        self.runs: dict[int, AppRun] = {}
        self.listeners: list[Callable[[int, str], None]] = []  # (app job id, what happened)
        self._lock = threading.Lock()

    @property
    def store(self):
        return self.gate.store

    def _notify(self, app_id: int, what: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(app_id, what)
            except Exception:  # a face's failure never stops a rollback
                pass

    def needs(self, stage: str, requester: str, services: list[str]) -> str:
        policy = self.gate.policy
        said = {}
        for name in services:
            said.setdefault(policy.approval_needs(stage, requester, name), []).append(name)
        if len(said) == 1:
            return next(iter(said))
        return "; ".join(f"{what} (for {', '.join(names)})" for what, names in said.items()) + \
            ": one approver allowed by all of them"

    # -- plans -----------------------------------------------------------------------------------

    def request(self, stage: str, ref: str, actor: Actor,
                targets: dict[str, tuple[str, str]] | None = None) -> PendingApp:
        gate, policy = self.gate, self.gate.policy
        stage = gate.stage(StageKey(APP, stage))
        gate.check_all(actor.user, "request", stage, gate.fleet.names,
                       lambda k: policy.may_act_in(stage, actor.channel, k.service))
        gate.within_limits(actor.user, StageKey(APP, stage))
        app = make_app_plan(gate.fleet, stage, ref, targets)
        moving = [s.service for s in app.rolling]
        gate.check_all(actor.user, "request", stage, moving,
                       lambda k: policy.may_request(stage, actor.user, actor.channel, actor.groups_of, k.service))
        now = gate.clock()
        job = self.shared.create(  # any replica may get the click on its card: the plan is in S3 too
            service=APP, stage=stage, target_commit=app.commit, requested_by=actor.user, origin=str(actor.origin),
            channel=actor.channel or "", created=now, expires=now + gate.ttl, plan_json=app_card_json(app),
            policy=gate.policy_source)
        job_id = job.id
        gate.audit(actor.user, "app.request", StageKey(APP, stage), job_id, ref=ref, services=moving)
        busy = []
        for step in app.rolling:
            lock = self.store.lock_of(StageKey(step.service, stage))
            if lock:
                busy.append(f"{step.service} (job {lock.job_id}, started by {plain_name(lock.holder)})")
        return PendingApp(job_id, app, now + gate.ttl, self.needs(stage, actor.user, moving), policy.configured,
                          busy, job.plan_ref)

    def undo(self, app_id: int, actor: Actor) -> PendingApp:
        """Plan the reverse move of an app rollback's finished services: each back to where it was."""
        job = self.store.job(app_id)
        if job is None or job.service != APP:
            raise Refused("That app rollback no longer exists.", RefusalKind.GONE)
        targets = {p.service: (p.live_commit, p.live_build) for p in self.store.parts_of(app_id)
                   if p.state == JobState.SUCCEEDED and p.live_commit}
        if not targets:
            raise Refused("No service of that rollback finished: there is nothing to roll forward.",
                          RefusalKind.CLOSED)
        return self.request(job.stage, f"undo:{app_id}", actor, targets)

    # -- approving and running -------------------------------------------------------------------

    def approve(self, job_id: int, actor: Actor, card: tuple[str, str] | None = None) -> Approved:
        """At a terminal the typed confirmation is the approval (no second person can be asked for there),
        so the approver is checked as an approver, not against the requester."""
        return approve(self.gate, job_id, actor, _AppApproval(self), terminal=actor.origin is Origin.TERMINAL,
                       card=card, shared=self.shared)

    def _run(self, job: Job, app: AppPlan, parts: dict[str, int], approver: str) -> None:
        audit = {"policy": self.gate.policy_source, "app": job.id}
        run = AppRun(self.gate.fleet, job.id, app, parts, job.requested_by, approver, self.concurrency,
                     self.on_failure, self._finished_or_progress, audit,
                     asked_elsewhere=lambda: self.shared.cancel_asked(job))
        with self._lock:
            self.runs[job.id] = run
        run.start()

    def _finished_or_progress(self, app_id: int, what: str) -> None:
        if what == "finished":
            with self._lock:
                self.runs.pop(app_id, None)
        self._notify(app_id, what)

    def cancel(self, job_id: int, user: str) -> str:
        with self._lock:
            run = self.runs.get(job_id)
        if run is None:
            job = self.store.job(job_id)
            if job is None or job.state != JobState.RUNNING:
                return f"App rollback {job_id} is not running; nothing was cancelled."
            if not runner_alive(job):  # its bot died: what a restart would do, now
                self.recover()
                return (f"App rollback {job_id}'s bot process is gone: it is marked interrupted and every lock "
                        "is released. Check each service's stack before doing anything else.")
            self.gate.audit(user, "app.cancel", StageKey(APP, job.stage), job_id, via=f"pid {job.pid}")
            self.store.update_job(job_id, cancelled_by=user)  # the process that runs it sees this and stops
            return (f"Cancelling app rollback {job_id}: the rollback-bot process that runs it (pid {job.pid}) "
                    "starts no further phase and stops its running services within a few seconds.")
        self.gate.audit(user, "app.cancel", StageKey(APP, run.app.stage), job_id)
        self.store.update_job(job_id, cancelled_by=user)
        run.cancel(user)
        return f"Cancelling app rollback {job_id}: no further phase starts, and running services are stopped."

    def recover(self) -> list[Job]:
        """App rollbacks a restart cut short (run after each service's runner recovered its own jobs):
        the services that never started are skipped and freed, and the app is marked interrupted with
        who is where. One that another live process on this machine runs is left alone."""
        recovered = []
        fleet = self.gate.fleet
        for job in self.store.jobs(states=[JobState.RUNNING], limit=1000, service=APP):
            with self._lock:
                if job.id in self.runs:
                    continue
            if runner_alive(job):
                continue
            parts = {p.service: p.id for p in self.store.parts_of(job.id)}
            for name, part_id in parts.items():
                part = self.store.job(part_id)
                if part.state == JobState.RUNNING and name in fleet.engines:
                    fleet.engine(name).jobs.recover()  # its own runner marks it interrupted
            rows = skip_unstarted(self.store, parts, "not started: the bot restarted during the app rollback",
                                  lambda name, part: fleet.engine(name).jobs.free_lease(part)
                                  if name in fleet.engines else None)
            where = who_is_where(rows)
            self.store.update_job(job.id, state=JobState.INTERRUPTED, finished=self.gate.clock(),
                                  reason=f"interrupted by a restart: {where or 'no service had started'}. "
                                         "Check each service's stack before doing anything else")
            self.gate.audit("rollback-bot", "app.interrupted", StageKey(APP, job.stage), job.id,
                            services={n: str(r.state) for n, r in rows.items()})
            recovered.append(self.store.job(job.id))
        return recovered

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        with self._lock:
            run = self.runs.get(job_id)
        if run is not None:
            run.thread.join(timeout)
        return self.store.job(job_id)

    def parts(self, job_id: int) -> list[Job]:
        return self.store.parts_of(job_id)


class _AppApproval:
    """The app's strategy on the one approval path: every moving service's policy, the whole app planned
    again, compared service by service, and every service's lock taken at once or none."""

    audit_action = "app.approve"

    def __init__(self, apps: AppRollbacks):
        self.apps = apps

    def check(self, gate: Gate, job: Job, actor: Actor, terminal: bool) -> None:
        stage, policy = job.stage, gate.policy
        moving = moving_services(job)
        requester = "" if terminal else job.requested_by
        gate.check_all(actor.user, "approve", stage, moving,
                       lambda k: policy.may_approve(stage, actor.user, requester, actor.channel, actor.groups_of,
                                                    k.service), job.id)
        for name in moving:
            now_ok = policy.may_request(stage, job.requested_by, job.channel or actor.channel,
                                        actor.groups_of, name)
            if not now_ok.allowed:
                gate.refuse(actor.user, "approve", StageKey(APP, stage), job.id,
                            f"The requester may no longer request rollbacks of `{name}` in `{stage}` "
                            f"({now_ok.reason}) Ask someone who may to request it again.")

    def plan_again(self, gate: Gate, job: Job, shown: dict):
        card = AppCard.parse(job.plan_json)
        targets = None
        if card.undo_of is not None:
            targets = {s.service: s.target for s in card.services if s.moves and s.target}
        app = make_app_plan(gate.fleet, job.stage, card.ref or job.target_commit, targets)
        return app, app_changes(card.summary, app.summary())

    def start(self, gate: Gate, job: Job, app: AppPlan, actor: Actor, unfreeze: bool) -> dict:
        store, stage, job_id = gate.store, job.stage, job.id
        parts = {}
        for step in app.rolling:
            plan = step.plan
            parts[step.service] = store.create_job(
                service=step.service, stage=stage, app_id=job_id, state=JobState.PENDING, origin=str(Origin.APP),
                target_commit=plan.target.commit, target_build=plan.target.build_id,
                live_commit=plan.live.commit if plan.live else "", live_build=plan.live.build_id if plan.live else "",
                requested_by=job.requested_by, channel=job.channel or "",
                plan_json=json.dumps({**json.loads(card_json(plan, plan.ref)), "service": step.service,
                                      "account": plan.account, "app": job_id}))
            store.claim(parts[step.service], JobState.PENDING, JobState.APPROVING, approved_by=actor.user)
        try:  # every service's lock, or none; then every service's lease in S3, or none
            store.acquire_locks([(StageKey(n, stage), i) for n, i in parts.items()], actor.user)
            self._take_leases(gate, stage, parts, actor.user, job.requested_by)
        except StageBusy as exc:
            for part in parts.values():
                store.update_job(part, state=JobState.REFUSED, reason=str(exc), finished=gate.clock())
            store.update_job(job_id, state=JobState.REFUSED, reason=str(exc), finished=gate.clock())
            gate.audit(actor.user, "approve.refused", StageKey(APP, stage), job_id, reason=str(exc))
            raise Refused(f"{exc}. Nothing was deployed: an app rollback takes every service's lock or none.",
                          RefusalKind.BUSY) from exc
        store.update_job(job_id, state=JobState.RUNNING, started=gate.clock(), **runner_stamp())
        self.apps._run(job, app, parts, actor.user)
        return {"services": list(parts)}


    @staticmethod
    def _take_leases(gate: Gate, stage: str, parts: dict[str, int], approver: str, requester: str) -> None:
        taken: list[tuple[str, int]] = []
        try:
            for name, part in parts.items():
                gate.engine(StageKey(name, stage)).jobs.take_lease(stage, part, approver, requester,
                                                                   str(Origin.APP), several=True)
                taken.append((name, part))
        except StageBusy:
            for name, part in taken:
                gate.engine(StageKey(name, stage)).jobs.drop_lease(part)
            for name, part in parts.items():
                gate.store.release_lock(StageKey(name, stage), part)
            raise


def app_changes(shown: dict, now: dict) -> list[str]:
    """Per service, what differs between the app card and the app plan now."""
    names = sorted(set(shown) | set(now))
    return [f"{name}: {change}" for name in names for change in _service_changes(shown.get(name), now.get(name))]


def _service_changes(shown, now) -> list[str]:
    if shown == now:
        return []
    if isinstance(shown, dict) and isinstance(now, dict):
        return summary_changes(shown, now)
    return [f"was {shown if isinstance(shown, str) else 'moving'}, now {now if isinstance(now, str) else 'moving'}"]


def moving_services(job: Job) -> list[str]:
    return AppCard.parse(job.plan_json).moving

"""App rollbacks for every face: request one for a stage, approve it under the strictest policy of the
services it moves, follow it, cancel it, and roll its finished services forward again.

Knows nothing of Slack. The rollback service (bot.engine.service) holds one of these as ``.apps``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.adapters.store import StageBusy, plain_name
from bot.core.jobs import APP, Job
from bot.core.keys import StageKey
from bot.engine.app import AppPlan, AppRun, app_card_json, make_app_plan, skip_unstarted, who_is_where
from bot.engine.planner import card_json, summary_changes
from bot.engine.runner import runner_alive, runner_stamp

if TYPE_CHECKING:
    from bot.engine.service import RollbackService


@dataclass
class PendingApp:
    job_id: int
    app: AppPlan
    expires_at: float
    needs: str
    policy_configured: bool
    busy: list[str]  # "api (job 7, started by U…)": services whose stage runs a job now


class AppRollbacks:
    def __init__(self, service: RollbackService, concurrency: int = 4, on_failure: str = "finish"):
        self.service = service
        self.concurrency = concurrency
        self.on_failure = on_failure
        self.runs: dict[int, AppRun] = {}
        self.listeners: list[Callable[[int, str], None]] = []  # (app job id, what happened)
        self._lock = threading.Lock()

    @property
    def store(self):
        return self.service.store

    def _notify(self, app_id: int, what: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(app_id, what)
            except Exception:  # a face's failure never stops a rollback
                pass

    def _keys(self, stage: str, app: AppPlan) -> list[StageKey]:
        return [StageKey(s.service, stage) for s in app.rolling]

    def _check_all(self, user: str, action: str, stage: str, services: list[str], decide, job_id=None) -> None:
        """The strictest policy among the services: every one of them must allow it."""
        for name in services:
            key = StageKey(name, stage)
            self.service._check(decide(key), user, action, key, job_id)

    def needs(self, stage: str, requester: str, services: list[str]) -> str:
        policy = self.service.policy
        said = {}
        for name in services:
            said.setdefault(policy.approval_needs(stage, requester, name), []).append(name)
        if len(said) == 1:
            return next(iter(said))
        return "; ".join(f"{what} (for {', '.join(names)})" for what, names in said.items()) + \
            ": one approver allowed by all of them"

    # -- plans -----------------------------------------------------------------------------------

    def request(self, stage: str, ref: str, user: str, channel: str | None, groups_of=lambda u: set(),
                targets: dict[str, tuple[str, str]] | None = None) -> PendingApp:
        svc, policy = self.service, self.service.policy
        stage = svc._stage(StageKey(APP, stage))
        self._check_all(user, "request", stage, svc.services,
                        lambda k: policy.may_act_in(stage, channel, k.service))
        svc._limits(user, StageKey(APP, stage))
        app = make_app_plan(svc.fleet, stage, ref, targets)
        moving = [s.service for s in app.rolling]
        self._check_all(user, "request", stage, moving,
                        lambda k: policy.may_request(stage, user, channel, groups_of, k.service))
        now = svc.clock()
        job_id = self.store.create_job(
            service=APP, stage=stage, target_commit=app.commit, requested_by=user, state="pending", origin="slack",
            channel=channel or "", created=now, expires=now + svc.ttl, plan_json=app_card_json(app),
            policy=policy.source if policy.configured else "none")
        svc._audit(user, "app.request", StageKey(APP, stage), job_id, ref=ref, services=moving)
        busy = []
        for key in self._keys(stage, app):
            lock = self.store.lock_of(key)
            if lock:
                busy.append(f"{key.service} (job {lock['job_id']}, started by {plain_name(lock['holder'])})")
        return PendingApp(job_id, app, now + svc.ttl, self.needs(stage, user, moving), policy.configured, busy)

    def undo(self, app_id: int, user: str, channel: str | None, groups_of=lambda u: set()) -> PendingApp:
        """Plan the reverse move of an app rollback's finished services: each back to where it was."""
        job = self.store.job(app_id)
        if job is None or job["service"] != APP:
            raise self.service.refused("That app rollback no longer exists.", "gone")
        targets = {p["service"]: (p["live_commit"], p["live_build"]) for p in self.store.parts_of(app_id)
                   if p["state"] == "succeeded" and p["live_commit"]}
        if not targets:
            raise self.service.refused("No service of that rollback finished: there is nothing to roll forward.",
                                       "closed")
        return self.request(job["stage"], f"undo:{app_id}", user, channel, groups_of, targets)

    # -- approving and running -------------------------------------------------------------------

    def approve(self, job_id: int, user: str, channel: str | None, groups_of=lambda u: set(),
                terminal: bool = False) -> Job:
        """``terminal``: the typed confirmation at a shell is the approval (no second person can be
        asked for there), so the approver is checked as an approver, not against the requester."""
        svc, policy = self.service, self.service.policy
        job = self.store.job(job_id)
        stage = job["stage"]
        key = StageKey(APP, stage)
        shown = json.loads(job.get("plan_json") or "{}")
        moving = [s["service"] for s in shown.get("services", []) if s["status"] == "roll"]
        svc._expired_or_closed(job, user)
        requester = "" if terminal else job["requested_by"]
        self._check_all(user, "approve", stage, moving,
                        lambda k: policy.may_approve(stage, user, requester, channel, groups_of, k.service), job_id)
        for name in moving:
            now_ok = policy.may_request(stage, job["requested_by"], job.get("channel") or channel, groups_of, name)
            if not now_ok.allowed:
                svc._refuse(user, "approve", key, job_id, f"The requester may no longer request rollbacks of "
                            f"`{name}` in `{stage}` ({now_ok.reason}) Ask someone who may to request it again.")
        if not self.store.claim(job_id, "pending", "approving", approved_by=user):
            raise svc.refused("Someone already approved this plan.", "closed")
        try:
            targets = None
            if shown.get("ref", "").startswith("undo:"):
                targets = {s["service"]: tuple(s["to"]) for s in shown["services"] if s["status"] == "roll"}
            app = make_app_plan(svc.fleet, stage, shown.get("ref") or job["target_commit"], targets)
            changes = [f"{name}: {change}" for name in sorted(set(shown.get("summary", {})) | set(app.summary()))
                       for change in _changes(shown.get("summary", {}).get(name), app.summary().get(name))]
            if changes:
                self.store.update_job(job_id, state="outdated", finished=svc.clock(),
                                      reason="out of date at approval: " + "; ".join(changes))
                svc._audit(user, "approve.outdated", key, job_id, changes=changes)
                raise svc.outdated("Nothing was deployed: the plan changed since the card was posted ("
                                   + "; ".join(changes) + "). Read the new plan before approving.",
                                   changes, Job.from_row(self.store.job(job_id)), app)
            parts = {}
            for step in app.rolling:
                plan = step.plan
                parts[step.service] = self.store.create_job(
                    service=step.service, stage=stage, app_id=job_id, state="pending", origin="app",
                    target_commit=plan.target.commit, target_build=plan.target.build_id,
                    live_commit=plan.live.commit if plan.live else "",
                    live_build=plan.live.build_id if plan.live else "",
                    requested_by=job["requested_by"], channel=job.get("channel") or "",
                    plan_json=json.dumps({**json.loads(card_json(plan, plan.ref)), "service": step.service,
                                          "account": plan.account, "app": job_id}))
                self.store.claim(parts[step.service], "pending", "approving", approved_by=user)
            try:  # every service's lock, or none
                self.store.acquire_locks([(StageKey(n, stage), i) for n, i in parts.items()], user)
            except StageBusy as exc:
                for part in parts.values():
                    self.store.update_job(part, state="refused", reason=str(exc), finished=svc.clock())
                self.store.update_job(job_id, state="refused", reason=str(exc), finished=svc.clock())
                svc._audit(user, "approve.refused", key, job_id, reason=str(exc))
                raise svc.refused(f"{exc}. Nothing was deployed: an app rollback takes every service's lock "
                                  "or none.", "busy") from exc
            self.store.update_job(job_id, state="running", started=svc.clock(), **runner_stamp())
        except Exception as exc:
            if isinstance(exc, svc.refused_type):
                raise
            self.store.update_job(job_id, state="failed", reason=str(exc), finished=svc.clock())
            raise
        audit = {"policy": policy.source if policy.configured else "none", "app": job_id}
        run = AppRun(svc.fleet, job_id, app, parts, job["requested_by"], user, self.concurrency, self.on_failure,
                     self._finished_or_progress, audit)
        with self._lock:
            self.runs[job_id] = run
        svc._audit(user, "app.approve", key, job_id, services=list(parts))
        run.start()
        return Job.from_row(self.store.job(job_id))

    def _finished_or_progress(self, app_id: int, what: str) -> None:
        if what == "finished":
            with self._lock:
                self.runs.pop(app_id, None)
        self._notify(app_id, what)

    def start_from_terminal(self, pending: PendingApp, actor: str) -> int:
        """A terminal's typed confirmation is the approval (as for one service)."""
        self.store.update_job(pending.job_id, origin="cli")
        self.approve(pending.job_id, actor, None, terminal=True)
        return pending.job_id

    def cancel(self, job_id: int, user: str) -> str:
        with self._lock:
            run = self.runs.get(job_id)
        if run is None:
            job = self.store.job(job_id)
            if job is None or job["state"] != "running":
                return f"App rollback {job_id} is not running; nothing was cancelled."
            if not runner_alive(job):  # its bot died: what a restart would do, now
                self.recover()
                return (f"App rollback {job_id}'s bot process is gone: it is marked interrupted and every lock "
                        "is released. Check each service's stack before doing anything else.")
            self.service._audit(user, "app.cancel", StageKey(APP, job["stage"]), job_id, via=f"pid {job['pid']}")
            self.store.update_job(job_id, cancelled_by=user)  # the process that runs it sees this and stops
            return (f"Cancelling app rollback {job_id}: the rollback-bot process that runs it (pid {job['pid']}) "
                    "starts no further phase and stops its running services within a few seconds.")
        self.service._audit(user, "app.cancel", StageKey(APP, run.app.stage), job_id)
        self.store.update_job(job_id, cancelled_by=user)
        run.cancel(user)
        return f"Cancelling app rollback {job_id}: no further phase starts, and running services are stopped."

    def recover(self) -> list[dict]:
        """App rollbacks a restart cut short (run after each service's runner recovered its own jobs):
        the services that never started are skipped and freed, and the app is marked interrupted with
        who is where. One that another live process on this machine runs is left alone."""
        recovered = []
        for job in self.store.jobs(states=["running"], limit=1000, service=APP):
            with self._lock:
                if job["id"] in self.runs:
                    continue
            if runner_alive(job):
                continue
            parts = {p["service"]: p["id"] for p in self.store.parts_of(job["id"])}
            for name, part_id in parts.items():
                part = self.store.job(part_id)
                if part["state"] == "running" and name in self.service.fleet.engines:
                    self.service.fleet.engine(name).jobs.recover()  # its own runner marks it interrupted
            rows = skip_unstarted(self.store, parts, "not started: the bot restarted during the app rollback")
            where = who_is_where(rows)
            self.store.update_job(job["id"], state="interrupted", finished=self.service.clock(),
                                  reason=f"interrupted by a restart: {where or 'no service had started'}. "
                                         "Check each service's stack before doing anything else")
            self.service._audit("rollback-bot", "app.interrupted", StageKey(APP, job["stage"]), job["id"],
                                services={n: r["state"] for n, r in rows.items()})
            recovered.append(self.store.job(job["id"]))
        return recovered

    def wait(self, job_id: int, timeout: float | None = None) -> dict:
        with self._lock:
            run = self.runs.get(job_id)
        if run is not None:
            run.thread.join(timeout)
        return self.store.job(job_id)

    def parts(self, job_id: int) -> list[Job]:
        return [Job.from_row(r) for r in self.store.parts_of(job_id)]


def _changes(shown, now) -> list[str]:
    if shown == now:
        return []
    if isinstance(shown, dict) and isinstance(now, dict):
        return summary_changes(shown, now)
    return [f"was {shown if isinstance(shown, str) else 'moving'}, now {now if isinstance(now, str) else 'moving'}"]

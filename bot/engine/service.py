"""The rollback service: every face (the CLI, Slack, the App Home, the demo) calls it and renders what
it returns. Nobody else reads indexes, filters job rows or writes audit entries.

Requesting and approving rollbacks: a plan waits for a person, who is checked at the click.

An approval approves exactly what the card showed: the plan is made again at the click and compared
with what was stored when the card was posted; any difference deploys nothing. The policy is
checked here, for every action and every face, not in the Slack handlers.

Knows nothing of Slack: the Slack handlers (and anything else) call it and render what it returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bot.adapters.artifacts import validate_stage
from bot.adapters.store import StageBusy
from bot.core.catalog import UnknownService
from bot.core.jobs import APP, RUN_STATES, Job, JobState
from bot.core.keys import StageKey
from bot.core.policy import Policy, PolicySource
from bot.core.stage_index import Artifact, Mark, StageIndex
from bot.engine.app_service import AppRollbacks
from bot.engine.build import Engine, Fleet
from bot.engine.planner import Plan, UnknownStage, card_json, load_stage, summary_changes
from bot.engine.refusals import Outdated, Refused

DEFAULT_TTL = 15 * 60


@dataclass(frozen=True)
class RequestLimits:
    plans_per_minute: int = 10  # per person
    pending_per_user: int = 5  # plans waiting for approval, per person


@dataclass
class Pending:
    job_id: int
    plan: Plan
    expires_at: float
    needs: str  # what approval needs, said on the card before anyone clicks
    policy_configured: bool
    running: Job | None = None  # a job running on the stage when the plan was made


@dataclass(frozen=True)
class Status:
    running: list[Job]
    freezes: dict[StageKey, Mark]
    hidden: int = 0  # stages left out: the policy keeps them to other channels


@dataclass(frozen=True)
class Overview:
    """The App Home: each stage's index and lock holder, recent runs, and whether a policy is set."""

    stages: list[tuple[StageIndex, dict | None]]
    jobs: list[Job]
    policy_configured: bool
    several: bool = False  # several services: rows name theirs
    watches: tuple | list = ()  # the alarm watch's running watches (store rows)
    parts: dict[int, list[Job]] | None = None  # each app rollback's services, by the app's job id
    hidden: int = 0  # stages left out: the policy keeps them to their channels


@dataclass(frozen=True)
class FreezeCheck:
    """What CI is told before it deploys: empty ``problems`` means go ahead."""

    stage: str
    commit: str
    problems: list[str]


class RollbackService:
    def __init__(self, engine: Engine | Fleet, policy: Policy | PolicySource, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time, limits: RequestLimits = RequestLimits()):
        self.fleet = engine if isinstance(engine, Fleet) else Fleet.of_one(engine)
        settings = self.fleet.settings
        self.apps = AppRollbacks(self, settings.app_concurrency, settings.app_on_failure)
        self.policies = policy if isinstance(policy, PolicySource) else PolicySource(policy)
        self.ttl = ttl
        self.clock = clock
        self.limits = limits

    @property
    def policy(self) -> Policy:
        return self.policies.current()

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

    def key(self, stage: str, service: str | None = None) -> StageKey:
        """The key of a stage of a service this bot serves; without a service, the default one."""
        if service is None and not self.several:
            return StageKey(self.engine.service, stage)
        try:
            return StageKey(self.fleet.catalog.resolve(service), stage)
        except UnknownService as exc:
            raise Refused(str(exc), "not_allowed") from None

    # the app service (bot.engine.app_service) builds its refusals through these
    refused = Refused
    refused_type = Refused
    outdated = Outdated

    def _stage(self, key: StageKey) -> str:
        if key.service == APP:  # an app rollback: every service of the stage
            return validate_stage(key.stage)
        if key.service not in self.fleet.engines:
            served = ", ".join(f"`{n}`" for n in self.fleet.names)
            raise Refused(f"This bot serves {served}, not `{key.service}`.", "not_allowed")
        return validate_stage(key.stage)

    def _engine(self, key: StageKey) -> Engine:
        self._stage(key)
        return self.fleet.engine(key.service)

    def _job_key(self, job: dict) -> StageKey:
        return StageKey(job.get("service") or self.engine.service, job["stage"])

    def runner_of(self, job_id: int):
        """The job runner of the service a job belongs to (to follow its events)."""
        job = self.store.job(job_id)
        return (self._engine(self._job_key(job)) if job else self.engine).jobs

    def account(self, key: StageKey) -> str:
        """Where a stage's AWS work happens, for cards and listings."""
        return self._engine(key).accounts.describe(key.stage) if self.fleet.shared.uses_accounts else ""

    @property
    def store(self):
        return self.fleet.store  # opened on first use: CI's read-only commands never create it

    # -- helpers ---------------------------------------------------------------------------------

    def _audit(self, actor: str, action: str, key: StageKey, job_id: int | None, **detail) -> None:
        policy = self.policy
        self.store.audit(actor, action, key, job_id, policy=policy.source if policy.configured else "none", **detail)

    def _refuse(self, user: str, action: str, key: StageKey, job_id: int | None, message: str, kind="not_allowed"):
        self._audit(user, f"{action}.refused", key, job_id, reason=message)
        raise Refused(message, kind)

    def _check(self, decision, user: str, action: str, key: StageKey, job_id: int | None = None) -> None:
        stage = self._stage(key)  # refusals quote the stage: only a valid name may appear in them
        if not decision.allowed:
            if self.policy.rule(stage, key.service) is None and job_id is None:
                # a typo'd stage: "no builds, known stages: …" helps more
                load_stage(self.fleet.engine(key.service).artifacts, stage)
            self._refuse(user, action, key, job_id, decision.reason)

    def may_view(self, key: StageKey, user: str, channel: str | None) -> None:
        """Listing and history follow the stage's channel rule too."""
        stage = self._stage(key)
        self._check(self.policy.may_act_in(stage, channel, key.service), user, "view", key)

    # -- plans -----------------------------------------------------------------------------------

    def request(self, key: StageKey, ref: str, user: str, channel: str | None, groups_of=lambda u: set()) -> Pending:
        """Check the requester and their limits, work out the plan, and record it as a pending job
        together with what its card shows."""
        stage = self._stage(key)
        engine = self._engine(key)
        self._check(self.policy.may_request(stage, user, channel, groups_of, key.service), user, "request", key)
        now = self.clock()
        self._limits(user, key)
        plan = engine.plan(stage, ref)
        policy = self.policy
        job_id = self.store.create_job(
            service=key.service, stage=stage, target_commit=plan.target.commit, target_build=plan.target.build_id,
            live_commit=plan.live.commit if plan.live else "", live_build=plan.live.build_id if plan.live else "",
            requested_by=user, state="pending", origin="slack", channel=channel or "", created=now,
            expires=now + self.ttl, stack_name=plan.stack_name, region=plan.region,
            plan_json=card_json(plan, ref),
            policy=policy.source if policy.configured else "none",
        )
        self._audit(user, "request", key, job_id, target=plan.target.label(), sha256=plan.target.sha256)
        running = engine.jobs.running_job(stage)
        return Pending(job_id, plan, now + self.ttl, policy.approval_needs(stage, user, key.service),
                       policy.configured, Job.from_row(running) if running else None)

    def _limits(self, user: str, key: StageKey) -> None:
        """Each person may ask for so many plans a minute and have so many waiting."""
        now = self.clock()
        recent = self.store.count_audit(user, ("request", "request.refused", "app.request"), now - 60)
        if recent >= self.limits.plans_per_minute:
            self._refuse(user, "request", key, None, f"You asked for {recent} plans in the last minute; wait a "
                         "minute and ask again.", "limited")
        waiting = sum(1 for j in self.store.jobs(states=["pending"], limit=1000, app_parts=False)
                      if j["requested_by"] == user and (j.get("expires") or 0) > now)
        if waiting >= self.limits.pending_per_user:
            self._refuse(user, "request", key, None, f"You have {waiting} plans waiting for approval; approve or "
                         "cancel one of them first.", "limited")

    def _expired_or_closed(self, job: dict, user: str) -> None:
        """A plan that is no longer waiting, or whose buttons expired, cannot be approved."""
        if job["state"] != "pending":
            what = {"running": "already approved and running", "succeeded": "already done",
                    "outdated": "out of date (what is live changed)"}.get(job["state"], job["state"])
            raise Refused(f"This plan was {what}; nothing more happens.", "closed")
        if self.clock() > (job.get("expires") or 0):
            if self.store.claim(job["id"], "pending", "expired", finished=self.clock()):
                self._audit(user, "approve.expired", self._job_key(job), job["id"])
            ask = f"`/rollback {job['stage']} {job['target_commit'][:8]}`" if job["target_commit"] else "again"
            raise Refused(f"This plan expired. Ask again with {ask}.", "expired")

    def is_app(self, job_id: int) -> bool:
        job = self.store.job(job_id)
        return bool(job) and job["service"] == APP

    def attach_message(self, job_id: int, channel: str, ts: str, permalink: str = "") -> None:
        self.store.update_job(job_id, channel=channel, message_ts=ts, permalink=permalink)

    def approve(self, job_id: int, user: str, channel: str | None, groups_of=lambda u: set(),
                unfreeze: bool = False) -> tuple[Job, Plan]:
        """Start the job of a pending plan, if the plan now is the plan the card showed. Exactly one
        of several concurrent clicks starts it."""
        job = self.store.job(job_id)
        if job is None:
            raise Refused("That plan no longer exists.", "gone")
        key = self._job_key(job)
        stage, engine = key.stage, self._engine(key)
        self._expired_or_closed(job, user)
        policy = self.policy
        # The approver, the requester and the channel are all checked now, not only when the card was posted.
        self._check(policy.may_approve(stage, user, job["requested_by"], channel, groups_of, key.service), user,
                    "approve", key, job_id)
        requester_now = policy.may_request(stage, job["requested_by"], job.get("channel") or channel, groups_of,
                                           key.service)
        if not requester_now.allowed:
            self._refuse(user, "approve", key, job_id,
                         f"The requester may no longer request rollbacks of `{stage}` ({requester_now.reason}) "
                         "Ask someone who may to request it again.")
        if not self.store.claim(job_id, "pending", "approving", approved_by=user):
            raise Refused("Someone already approved this plan.", "closed")
        try:
            # Plan again at the click and compare: what is live, or the stored package, may have changed.
            plan = engine.plan(stage, job["target_commit"], job["target_build"])
            shown = json.loads(job.get("plan_json") or "{}")
            changes = summary_changes(shown, plan.summary())
            if changes:
                self.store.update_job(job_id, state="outdated", finished=self.clock(),
                                      reason="out of date at approval: " + "; ".join(changes))
                self._audit(user, "approve.outdated", key, job_id, changes=changes)
                plan.ref = shown.get("ref") or plan.ref
                raise Outdated("Nothing was deployed: the plan changed since the card was posted ("
                               + "; ".join(changes) + "). Read the new plan before approving.",
                               changes, Job.from_row(self.store.job(job_id)), plan)
            engine.jobs.start(plan, job["requested_by"], approved_by=user, origin="slack", job_id=job_id,
                                   unfreeze=unfreeze and plan.forward,
                                   audit={"policy": policy.source if policy.configured else "none"})
        except StageBusy as exc:
            self.store.update_job(job_id, state="refused", reason=str(exc), finished=self.clock())
            self._audit(user, "approve.refused", key, job_id, reason=str(exc))
            raise Refused(str(exc), "busy") from exc
        except Refused:
            raise
        except Exception as exc:
            self.store.update_job(job_id, state="failed", reason=str(exc), finished=self.clock())
            raise
        self._audit(user, "approve", key, job_id, sha256=plan.target.sha256)
        return Job.from_row(self.store.job(job_id)), plan

    def withdraw(self, job_id: int, user: str, channel: str | None = None, groups_of=lambda u: set()) -> Job:
        """Cancel a pending plan: its requester or anyone who may approve it."""
        job = self.store.job(job_id)
        if job is None or job["state"] != "pending":
            raise Refused("This plan is no longer waiting for approval.", "closed")
        key = self._job_key(job)
        self._check(self.policy.may_act_in(key.stage, channel, key.service), user, "withdraw", key, job_id)
        if user != job["requested_by"]:
            decision = self.policy.may_approve(key.stage, user, job["requested_by"], channel, groups_of, key.service)
            if not decision.allowed:
                self._refuse(user, "withdraw", key, job_id, "Only the requester or an approver may cancel it.")
        if not self.store.claim(job_id, "pending", "withdrawn", finished=self.clock(), cancelled_by=user):
            raise Refused("This plan is no longer waiting for approval.", "closed")
        self._audit(user, "withdraw", key, job_id)
        return Job.from_row(self.store.job(job_id))

    def sweep_expired(self) -> list[Job]:
        """Close plans whose buttons expired; returns them so their cards can say so."""
        now = self.clock()
        swept = []
        for job in self.store.jobs(states=["pending"], limit=500):
            if (job.get("expires") or 0) < now and self.store.claim(job["id"], "pending", "expired", finished=now):
                self._audit("rollback-bot", "plan.expired", self._job_key(job), job["id"])
                swept.append(Job.from_row(self.store.job(job["id"])))
        return swept

    # -- running jobs ----------------------------------------------------------------------------

    def _may_cancel(self, job: dict, user: str, channel: str | None, groups_of) -> None:
        key = self._job_key(job)
        self._check(self.policy.may_act_in(key.stage, channel, key.service), user, "cancel", key, job["id"])
        if user not in (job["requested_by"], job["approved_by"]):
            decision = self.policy.may_approve(key.stage, user, job["requested_by"], channel, groups_of, key.service)
            if not decision.allowed:
                self._refuse(user, "cancel", key, job["id"], "Only the requester, the approver or an approver may "
                                                               "cancel a running rollback.")

    def cancel_job(self, job_id: int, user: str, channel: str | None = None, groups_of=lambda u: set()) -> str:
        """Cancel one job (the one a Cancel button was drawn for), never whatever runs now."""
        job = self.store.job(job_id)
        if job is None:
            raise Refused("That job no longer exists.", "gone")
        if job["state"] != "running":
            raise Refused(f"Job {job_id} already ended ({job['state']}); nothing was cancelled.", "closed")
        self._may_cancel(job, user, channel, groups_of)
        if job["service"] == APP:
            return self.apps.cancel(job_id, user)
        outcome = self._engine(self._job_key(job)).jobs.cancel(job_id, user)
        if outcome == "runner_gone":
            return (f"Job {job_id}'s bot process is gone: the job is marked interrupted and the stage's lock "
                    "released. Check the stack before doing anything else.")
        if outcome == "asked":
            return (f"Cancelling job {job_id}: the rollback-bot process that runs it (pid {job['pid']}) stops its "
                    "processes within a few seconds.")
        if outcome == "ended":
            raise Refused(f"Job {job_id} already ended; nothing was cancelled.", "closed")
        return f"Cancelling job {job_id}: its processes are being stopped."

    def cancel_running(self, key: StageKey, user: str, channel: str | None = None, groups_of=lambda u: set()) -> str:
        stage = self._stage(key)
        job = self._engine(key).jobs.running_job(stage)
        if job is None:
            self._check(self.policy.may_act_in(stage, channel, key.service), user, "cancel", key)
            raise Refused(f"No rollback of `{stage}` is running here.", "gone")
        return self.cancel_job(job["id"], user, channel, groups_of)

    def cancel_in_stage(self, stage: str, user: str, channel: str | None = None, groups_of=lambda u: set()) -> str:
        """`/rollback cancel prod` on a bot of several services: the app rollback running in the stage, or
        the one service's rollback running there. Several services' own rollbacks are named, not guessed."""
        stage = self._stage(StageKey(APP, stage))
        running = [Job.from_row(r) for r in self.store.jobs(states=[JobState.RUNNING]) if r["stage"] == stage]
        app = next((j for j in running if j.is_app), None)
        if app is not None:
            return self.cancel_job(app.id, user, channel, groups_of)
        alone = [j for j in running if not j.app_id]
        if len(alone) == 1:
            return self.cancel_job(alone[0].id, user, channel, groups_of)
        self._check(self.policy.may_act_in(stage, channel), user, "cancel", StageKey(APP, stage))
        if not alone:
            raise Refused(f"No rollback of `{stage}` is running here.", "gone")
        named = ", ".join(f"`{j.service}` (job {j.id})" for j in sorted(alone, key=lambda j: j.service))
        raise Refused(f"Several rollbacks are running in `{stage}`: {named}. Say which one: "
                      f"`/rollback cancel {sorted(alone, key=lambda j: j.service)[0].service} {stage}`.", "busy")

    def unfreeze(self, key: StageKey, user: str, channel: str | None = None, groups_of=lambda u: set()) -> str | None:
        stage = self._stage(key)
        self._check(self.policy.may_approve(stage, user, "", channel, groups_of, key.service), user, "unfreeze", key)
        was = self._engine(key).artifacts.unfreeze(stage)
        self._audit(user, "unfreeze", key, None, was=was.reason if was else None)
        return was.reason if was else None

    # -- what people read ------------------------------------------------------------------------

    def listing(self, key: StageKey, user: str, channel: str | None) -> StageIndex:
        stage = self._stage(key)
        self.may_view(key, user, channel)
        return load_stage(self._engine(key).artifacts, stage)

    def index(self, key: StageKey) -> StageIndex:
        """A stage's index as CI reads it (S3 only; an unknown stage is simply empty)."""
        stage = self._stage(key)
        return self._engine(key).artifacts.read_index(stage)

    def builds(self, key: StageKey) -> StageIndex:
        """A stage's index for a person reading it: a stage with no builds is a typo until shown
        otherwise, and the refusal names the closest known stage."""
        return load_stage(self._engine(key).artifacts, self._stage(key))

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

    def history(self, key: StageKey, user: str, channel: str | None, limit: int = 20) -> list[Job]:
        """The stage's runs, newest first: plans that never ran are not history."""
        self._stage(key)
        self.may_view(key, user, channel)
        return self._runs(key, limit)

    def history_of(self, stage: str, key: StageKey | None, user: str, channel: str | None,
                   limit: int = 20) -> list[Job]:
        """One service's runs on a stage, or (``key`` None, a bot of several services) every service's."""
        if key is not None:
            return self.history(key, user, channel, limit)
        stage = validate_stage(stage)
        for name in self.fleet.names:
            self.may_view(StageKey(name, stage), user, channel)
        rows = self.store.jobs(stage=stage, states=[str(s) for s in RUN_STATES], limit=limit, app_parts=False)
        return [Job.from_row(r) for r in rows]

    def stage_names(self) -> list[str]:
        """Every stage any service has builds in (for help)."""
        return sorted({s for e in self.fleet.engines.values() for s in e.artifacts.stages()})

    def _runs(self, key: StageKey | None, limit: int) -> list[Job]:
        rows = self.store.jobs(stage=key.stage if key else None, service=key.service if key else None,
                               states=[str(s) for s in RUN_STATES], limit=limit, app_parts=key is not None)
        return [Job.from_row(r) for r in rows]

    def indexes(self, stage: str | None = None) -> list[StageIndex]:
        """Every (service, stage) index this bot serves (or one stage's, across services), read
        concurrently: each is one request, answered 304 when unchanged."""
        engines = list(self.fleet.engines.values())
        with ThreadPoolExecutor(max_workers=min(16, len(engines))) as pool:
            stage_lists = list(pool.map(lambda e: [stage] if stage else e.artifacts.stages(), engines))
            pairs = [(e, s) for e, stages in zip(engines, stage_lists, strict=True) for s in stages]
            return list(pool.map(lambda p: p[0].artifacts.read_index(p[1]), pairs))

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

    def status(self, channel: str | None = "") -> Status:
        """What runs and what is frozen. In Slack (``channel``) only the stages the policy lets that
        channel see; ``""`` (the terminal, on the bot's host) everything."""
        running = [Job.from_row(r) for r in self.store.jobs(states=[JobState.RUNNING])]
        freezes = {StageKey(i.service, i.stage): i.freeze for i in self.indexes() if i.freeze}
        if channel == "":
            return Status(running, freezes)
        shown_jobs = [j for j in running if self._shown_in(j.stage, j.service, channel)]
        shown_freezes = {k: m for k, m in freezes.items() if self._shown_in(k.stage, k.service, channel)}
        hidden = {(j.service, j.stage) for j in running if j not in shown_jobs} | {
            (k.service, k.stage) for k in freezes if k not in shown_freezes}
        return Status(shown_jobs, shown_freezes, len(hidden))

    def overview(self) -> Overview:
        """The App Home: only the stages that no policy keeps to particular channels."""
        indexes = self.indexes()
        shown = [i for i in indexes if self._shown_in(i.stage, i.service, None)]
        stages = [(i, self.store.lock_of(StageKey(i.service, i.stage))) for i in shown]
        runs = [j for j in self._runs(None, 30) if self._shown_in(j.stage, j.service, None)][:10]
        watches = [w for w in self.store.watches(limit=50) if self._shown_in(w["stage"], w["service"], None)][:20]
        parts = {j.id: self.apps.parts(j.id) for j in runs if j.is_app}
        return Overview(stages, runs, self.policy.configured, self.several, watches, parts,
                        len(indexes) - len(shown))

    def stage_overview(self, stage: str, user: str, channel: str | None) -> list[tuple[StageIndex, str]]:
        """``/rollback prod`` with several services: each service's index of the stage, and where it runs."""
        stage = validate_stage(stage)
        for name in self.fleet.names:
            self.may_view(StageKey(name, stage), user, channel)
        found = [i for i in self.indexes(stage) if i.artifacts]
        if not found:
            load_stage(self.engine.artifacts, stage)  # no service has the stage: say which stages exist
        return [(i, self.account(StageKey(i.service, stage))) for i in found]

    def check_freeze(self, key: StageKey, commit: str = "") -> FreezeCheck:
        """For CI: may this stage be deployed (with this commit)? Reads S3 only."""
        stage = self._stage(key)
        index = self._engine(key).artifacts.read_index(stage)
        flags = f" --service {key.service}" if self.several else ""
        problems = []
        if index.freeze:
            f = index.freeze
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(f.at))
            what = f"{key.service} on stage {stage}" if self.several else f"stage {stage}"
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

    def audit(self, since: float, key: StageKey | None = None) -> list[dict]:
        """The audit trail from ``since`` on (every request, approval, refusal, run and unfreeze)."""
        if key:
            self._stage(key)
        rows = self.store.audit_since(since, key)
        return [{**r, "detail": json.loads(r["detail"] or "{}")} for r in rows]

    # -- the terminal ----------------------------------------------------------------------------

    def plan_for_terminal(self, key: StageKey, ref: str, actor: str) -> Plan:
        """A rollback from a shell: the operator, named by --by or ROLLBACK_ACTOR, must be one the policy
        lets request and approve. (A second person cannot be asked for at a terminal: the typed
        confirmation is the approval, and the audit trail records it as the CLI's.)"""
        stage = self._stage(key)
        policy = self.policy
        self._check(policy.may_request(stage, actor, None, service=key.service), actor, "request", key)
        self._check(policy.may_approve(stage, actor, "", None, service=key.service), actor, "approve", key)
        return self._engine(key).plan(stage, ref)

    def start_from_terminal(self, plan: Plan, actor: str, ref: str, unfreeze: bool) -> int:
        if unfreeze and not plan.forward:
            raise Refused("--unfreeze applies to a roll forward only; a rollback freezes CI", "not_allowed")
        policy = self.policy
        engine = self._engine(StageKey(plan.service or self.engine.service, plan.stage))
        return engine.jobs.start(plan, requested_by=actor, approved_by=actor, origin="cli", unfreeze=unfreeze,
                                      plan_json=card_json(plan, ref),
                                      audit={"policy": policy.source if policy.configured else "none"})


"""The one policy gate: every action of every face, on one service or on the whole app, is checked,
limited, audited and refused here, and nowhere else.

The rollback service (bot.engine.service) and the app rollbacks (bot.engine.app_service) both hold the
same gate; neither reaches into the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.adapters.artifacts import validate_stage
from bot.core.catalog import UnknownService
from bot.core.jobs import APP, Job, JobState
from bot.core.keys import StageKey
from bot.core.policy import Policy, PolicySource
from bot.engine.build import Engine, Fleet
from bot.engine.planner import load_stage
from bot.engine.refusals import RefusalKind, Refused

DEFAULT_TTL = 15 * 60


@dataclass(frozen=True)
class RequestLimits:
    plans_per_minute: int = 10  # per person
    pending_per_user: int = 5  # plans waiting for approval, per person


class Gate:
    def __init__(self, fleet: Fleet, policies: PolicySource, clock: Callable[[], float] = time.time,
                 ttl: float = DEFAULT_TTL, limits: RequestLimits = RequestLimits()):
        self.fleet = fleet
        self.policies = policies
        self.clock = clock
        self.ttl = ttl
        self.limits = limits

    @property
    def policy(self) -> Policy:
        return self.policies.current()

    @property
    def store(self):
        return self.fleet.store

    @property
    def policy_source(self) -> str:
        """What the audit trail records as the policy in force."""
        policy = self.policy
        return policy.source if policy.configured else "none"

    # -- names -----------------------------------------------------------------------------------

    def key(self, stage: str, service: str | None = None) -> StageKey:
        """The key of a stage of a service this bot serves; without a service, the default one."""
        if service is None and not self.fleet.several:
            return StageKey(self.fleet.default.service, stage)
        try:
            return StageKey(self.fleet.catalog.resolve(service), stage)
        except UnknownService as exc:
            raise Refused(str(exc), RefusalKind.NOT_ALLOWED) from None

    def stage(self, key: StageKey) -> str:
        """The stage's name once it is known valid (refusals quote it), and the service one this bot serves."""
        if key.service != APP and key.service not in self.fleet.engines:
            served = ", ".join(f"`{n}`" for n in self.fleet.names)
            raise Refused(f"This bot serves {served}, not `{key.service}`.", RefusalKind.NOT_ALLOWED)
        return validate_stage(key.stage)

    def engine(self, key: StageKey) -> Engine:
        self.stage(key)
        return self.fleet.engine(key.service)

    def job_key(self, job: Job) -> StageKey:
        return StageKey(job.service or self.fleet.default.service, job.stage)

    # -- checks ----------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, key: StageKey, job_id: int | None, **detail) -> None:
        self.store.audit(actor, action, key, job_id, policy=self.policy_source, **detail)

    def refuse(self, user: str, action: str, key: StageKey, job_id: int | None, message: str,
               kind: RefusalKind = RefusalKind.NOT_ALLOWED):
        self.audit(user, f"{action}.refused", key, job_id, reason=message)
        raise Refused(message, kind)

    def check(self, decision, user: str, action: str, key: StageKey, job_id: int | None = None) -> None:
        stage = self.stage(key)
        if not decision.allowed:
            if key.service != APP and self.policy.rule(stage, key.service) is None and job_id is None:
                # a typo'd stage: "no builds, known stages: …" helps more
                load_stage(self.fleet.engine(key.service).artifacts, stage)
            self.refuse(user, action, key, job_id, decision.reason)

    def check_all(self, user: str, action: str, stage: str, services: list[str], decide, job_id=None) -> None:
        """The strictest policy among the services: every one of them must allow it."""
        for name in services:
            key = StageKey(name, stage)
            self.check(decide(key), user, action, key, job_id)

    def within_limits(self, user: str, key: StageKey) -> None:
        """Each person may ask for so many plans a minute and have so many waiting."""
        now = self.clock()
        recent = self.store.count_audit(user, ("request", "request.refused", "app.request"), now - 60)
        if recent >= self.limits.plans_per_minute:
            self.refuse(user, "request", key, None, f"You asked for {recent} plans in the last minute; wait a "
                        "minute and ask again.", RefusalKind.LIMITED)
        waiting = sum(1 for j in self.store.jobs(states=[JobState.PENDING], limit=1000, app_parts=False)
                      if j.requested_by == user and j.expires > now)
        if waiting >= self.limits.pending_per_user:
            self.refuse(user, "request", key, None, f"You have {waiting} plans waiting for approval; approve or "
                        "cancel one of them first.", RefusalKind.LIMITED)

    def still_open(self, job: Job, user: str) -> None:
        """A plan that is no longer waiting, or whose buttons expired, cannot be approved."""
        if job.state != JobState.PENDING:
            what = {JobState.RUNNING: "already approved and running", JobState.SUCCEEDED: "already done",
                    JobState.OUTDATED: "out of date (what is live changed)"}.get(job.state, job.state)
            raise Refused(f"This plan was {what}; nothing more happens.", RefusalKind.CLOSED)
        if self.clock() > job.expires:
            if self.store.claim(job.id, JobState.PENDING, JobState.EXPIRED, finished=self.clock()):
                self.audit(user, "approve.expired", self.job_key(job), job.id)
            if job.service == APP:
                ask = f"`/rollback {job.stage} {job.target_commit[:8]}`"
            elif self.fleet.several:
                ask = f"`/rollback {job.service} {job.stage} {job.target_commit[:8]}`"
            else:
                ask = f"`/rollback {job.stage} {job.target_commit[:8]}`"
            raise Refused(f"This plan expired. Ask again with {ask if job.target_commit else 'a new plan'}.",
                          RefusalKind.EXPIRED)

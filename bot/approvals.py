"""Requesting and approving rollbacks: a plan waits for a person, who is checked at the click.

Knows nothing of Slack: the Slack handlers (and anything else) call it and render what it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.engine import Engine
from bot.plan import Plan
from bot.policy import Policy
from bot.store import StageBusy

DEFAULT_TTL = 15 * 60


class Refused(Exception):
    """The person cannot do this now; the message says why and what to do instead."""

    def __init__(self, message: str, kind: str = "not_allowed"):
        super().__init__(message)
        self.kind = kind  # not_allowed | expired | closed | busy | gone


@dataclass
class Pending:
    job_id: int
    plan: Plan
    expires_at: float


class Approvals:
    def __init__(self, engine: Engine, policy: Policy, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time):
        self.engine = engine
        self.store = engine.store
        self.policy = policy
        self.ttl = ttl
        self.clock = clock

    def _refuse(self, user: str, action: str, stage: str, job_id: int | None, message: str, kind="not_allowed"):
        self.store.audit(user, f"{action}.refused", stage, job_id, reason=message)
        raise Refused(message, kind)

    def request(self, stage: str, ref: str, user: str, channel: str, groups_of=lambda u: set()) -> Pending:
        """Check the requester, work out the plan, and record it as a pending job."""
        decision = self.policy.may_request(stage, user, channel, groups_of)
        if not decision.allowed:
            self._refuse(user, "request", stage, None, decision.reason)
        plan = self.engine.plan(stage, ref)
        now = self.clock()
        job_id = self.store.create_job(
            stage=stage, target_commit=plan.target.commit, target_build=plan.target.build_id,
            live_commit=plan.live.commit if plan.live else "", live_build=plan.live.build_id if plan.live else "",
            requested_by=user, state="pending", origin="slack", channel=channel, created=now,
            expires=now + self.ttl, stack_name=plan.stack_name, region=plan.region,
        )
        self.store.audit(user, "request", stage, job_id, target=plan.target.label())
        return Pending(job_id, plan, now + self.ttl)

    def attach_message(self, job_id: int, channel: str, ts: str) -> None:
        self.store.update_job(job_id, channel=channel, message_ts=ts)

    def approve(self, job_id: int, user: str, groups_of=lambda u: set()) -> tuple[dict, Plan]:
        """Start the job of a pending plan. Exactly one of several concurrent clicks starts it."""
        job = self.store.job(job_id)
        if job is None:
            raise Refused("That plan no longer exists.", "gone")
        stage = job["stage"]
        if job["state"] != "pending":
            what = {"running": "already approved and running", "succeeded": "already done"}.get(
                job["state"], job["state"])
            raise Refused(f"This plan was {what}; nothing more happens.", "closed")
        if self.clock() > (job.get("expires") or 0):
            if self.store.claim(job_id, "pending", "expired", finished=self.clock()):
                self.store.audit(user, "approve.expired", stage, job_id)
            raise Refused(f"This plan expired. Ask again with `/rollback {stage} {job['target_commit'][:8]}`.",
                          "expired")
        decision = self.policy.may_approve(stage, user, job["requested_by"], groups_of)
        if not decision.allowed:
            self._refuse(user, "approve", stage, job_id, decision.reason)
        if not self.store.claim(job_id, "pending", "approving", approved_by=user):
            raise Refused("Someone already approved this plan.", "closed")
        try:
            # Plan again at the click: what is live may have changed since the card was posted.
            plan = self.engine.plan(stage, job["target_commit"], job["target_build"])
            self.engine.jobs.start(plan, job["requested_by"], approved_by=user, origin="slack", job_id=job_id)
        except StageBusy as exc:
            self.store.update_job(job_id, state="refused", reason=str(exc), finished=self.clock())
            self.store.audit(user, "approve.refused", stage, job_id, reason=str(exc))
            raise Refused(str(exc), "busy") from exc
        except Exception as exc:
            self.store.update_job(job_id, state="failed", reason=str(exc), finished=self.clock())
            raise
        self.store.audit(user, "approve", stage, job_id)
        return self.store.job(job_id), plan

    def withdraw(self, job_id: int, user: str, groups_of=lambda u: set()) -> dict:
        """Cancel a pending plan: its requester or anyone who may approve it."""
        job = self.store.job(job_id)
        if job is None or job["state"] != "pending":
            raise Refused("This plan is no longer waiting for approval.", "closed")
        if user != job["requested_by"]:
            decision = self.policy.may_approve(job["stage"], user, job["requested_by"], groups_of)
            if not decision.allowed:
                self._refuse(user, "withdraw", job["stage"], job_id, "Only the requester or an approver may cancel it.")
        if not self.store.claim(job_id, "pending", "withdrawn", finished=self.clock(), cancelled_by=user):
            raise Refused("This plan is no longer waiting for approval.", "closed")
        self.store.audit(user, "withdraw", job["stage"], job_id)
        return self.store.job(job_id)

    def cancel_running(self, stage: str, user: str, groups_of=lambda u: set()) -> dict:
        job = self.engine.jobs.running_job(stage)
        if job is None:
            raise Refused(f"No rollback of `{stage}` is running here.", "gone")
        if user not in (job["requested_by"], job["approved_by"]):
            decision = self.policy.may_approve(stage, user, job["requested_by"], groups_of)
            if not decision.allowed:
                self._refuse(user, "cancel", stage, job["id"], "Only the requester, the approver or an approver may "
                                                               "cancel a running rollback.")
        self.engine.jobs.cancel(job["id"], user)
        return job

    def unfreeze(self, stage: str, user: str, groups_of=lambda u: set()) -> str | None:
        decision = self.policy.may_approve(stage, user, "", groups_of)
        if not decision.allowed:
            self._refuse(user, "unfreeze", stage, None, decision.reason)
        was = self.engine.artifacts.unfreeze(stage)
        self.store.audit(user, "unfreeze", stage, None, was=was.reason if was else None)
        return was.reason if was else None

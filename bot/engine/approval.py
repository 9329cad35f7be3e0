"""One approval path for every rollback, one service's or the whole app's:

    claim (pending → approving, once) → plan again → compare with what the card showed → start

An approval approves exactly what the card showed; any difference deploys nothing and says what changed.
What differs between one service and the app is a strategy: who must allow it, how it is planned again,
how the plans are compared, and how it starts. The skeleton, the refusals and the audit are here once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from bot.adapters.store import StageBusy
from bot.core.actor import Actor
from bot.core.jobs import APP, Job, JobState
from bot.core.plan_ticket import TicketState
from bot.engine.gate import Gate
from bot.engine.planner import summary_changes
from bot.engine.refusals import Outdated, RefusalKind, Refused
from bot.engine.shared_plans import SharedPlans


@dataclass
class Approved:
    """A started job and the plan it runs (an ``AppPlan`` for the app)."""

    job: Job
    plan: object


class Strategy(Protocol):
    audit_action: str

    def check(self, gate: Gate, job: Job, actor: Actor, terminal: bool) -> None:
        """The approver, the requester (still allowed?) and the channel, under each moving service's policy."""

    def plan_again(self, gate: Gate, job: Job, shown: dict):
        """The plan as it would run now, and the changes from ``shown`` in words."""

    def start(self, gate: Gate, job: Job, plan, actor: Actor, unfreeze: bool) -> dict:
        """Start it; StageBusy is refused by the caller. Returns extra audit detail."""


def approve(gate: Gate, job_id: int, actor: Actor, strategy: Strategy, unfreeze: bool = False,
            terminal: bool = False, card: tuple[str, str] | None = None, shared: SharedPlans | None = None) -> Approved:
    """Start the job of a pending plan if the plan now is the plan its card showed. Exactly one of several
    concurrent clicks starts it; a click after Cancel or expiry does nothing but say so."""
    job = gate.store.job(job_id)
    if job is None:
        raise Refused("That plan no longer exists.", RefusalKind.GONE)
    key = gate.job_key(job)
    gate.still_open(job, actor.user)
    strategy.check(gate, job, actor, terminal)
    if card is not None and job.message_ts and (job.channel, job.message_ts) != card:
        # the (channel, ts) of the message clicked: only the job's own card approves it
        gate.refuse(actor.user, "approve", key, job_id, f"That Approve button is not on the card of job {job_id}: "
                    "approve the plan on the card that shows it. Nothing was deployed.", RefusalKind.GONE)
    if not gate.store.claim(job_id, JobState.PENDING, JobState.APPROVING, approved_by=actor.user):
        raise Refused("Someone already approved this plan.", RefusalKind.CLOSED)
    if shared is not None:  # and once among every replica: pending → approved in S3, conditionally
        try:
            shared.close(job, TicketState.APPROVED, actor.user)
        except Refused as exc:
            gate.store.update_job(job_id, state=JobState.REFUSED, reason=str(exc), finished=gate.clock())
            gate.audit(actor.user, "approve.refused", key, job_id, reason=str(exc))
            raise
    shown = json.loads(job.plan_json or "{}")
    try:
        plan, changes = strategy.plan_again(gate, job, shown)
        if changes:
            gate.store.update_job(job_id, state=JobState.OUTDATED, finished=gate.clock(),
                                  reason="out of date at approval: " + "; ".join(changes))
            gate.audit(actor.user, "approve.outdated", key, job_id, changes=changes)
            raise Outdated("Nothing was deployed: the plan changed since the card was posted ("
                           + "; ".join(changes) + "). Read the new plan before approving.",
                           changes, gate.store.job(job_id), plan,
                           ref=job.ref or str(getattr(plan, "ref", "")),
                           service=APP if key.service == APP else "")
        detail = strategy.start(gate, job, plan, actor, unfreeze)
    except StageBusy as exc:
        gate.store.update_job(job_id, state=JobState.REFUSED, reason=str(exc), finished=gate.clock())
        gate.audit(actor.user, "approve.refused", key, job_id, reason=str(exc))
        raise Refused(str(exc), RefusalKind.BUSY) from exc
    except Refused:
        raise
    except Exception as exc:
        gate.store.update_job(job_id, state=JobState.FAILED, reason=str(exc), finished=gate.clock())
        raise
    gate.audit(actor.user, strategy.audit_action, key, job_id, **detail)
    return Approved(gate.store.job(job_id), plan)


class OneService:
    """A plan of one service: its policy, its plan, its runner."""

    audit_action = "approve"

    def check(self, gate: Gate, job: Job, actor: Actor, terminal: bool) -> None:
        key = gate.job_key(job)
        policy = gate.policy
        requester = "" if terminal else job.requested_by
        gate.check(policy.may_approve(key.stage, actor.user, requester, actor.channel, actor.groups_of, key.service),
                   actor.user, "approve", key, job.id)
        requester_now = policy.may_request(key.stage, job.requested_by, job.channel or actor.channel,
                                           actor.groups_of, key.service)
        if not requester_now.allowed:
            gate.refuse(actor.user, "approve", key, job.id,
                        f"The requester may no longer request rollbacks of `{key.stage}` ({requester_now.reason}) "
                        "Ask someone who may to request it again.")

    def plan_again(self, gate: Gate, job: Job, shown: dict):
        key = gate.job_key(job)
        plan = gate.engine(key).plan(key.stage, job.target_commit, job.target_build)
        plan.ref = job.ref or plan.ref
        return plan, summary_changes(shown, plan.summary())

    def start(self, gate: Gate, job: Job, plan, actor: Actor, unfreeze: bool) -> dict:
        key = gate.job_key(job)
        gate.engine(key).jobs.start(plan, job.requested_by, approved_by=actor.user, origin=str(actor.origin),
                                    job_id=job.id, unfreeze=unfreeze and plan.forward,
                                    audit={"policy": gate.policy_source})
        return {"sha256": plan.target.sha256}

"""Pending plans shared by every replica of the bot (``bot.core.plan_ticket``): a plan's ticket is posted
to S3 when its card is, and the state changes that matter (approved, withdrawn, expired) are made there
first, conditionally, so a click handled by any replica approves exactly what the card showed, once.

A replica that gets a click on a card another replica posted takes the plan from its ticket into its own
sqlite, and from there the one approval path (bot.engine.approval) runs as for its own plans: the policy
checked again, the plan made again and compared with what the card showed.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import socket
from dataclasses import replace

from bot.adapters.plan_board import BoardUnavailable, PlanBoard
from bot.adapters.store import plain_name
from bot.core.catalog import UnknownService
from bot.core.jobs import APP, Job, JobState
from bot.core.keys import StageKey
from bot.core.plan_ticket import PlanRef, PlanTicket, TicketFormatError, TicketState, card_mac
from bot.engine.gate import Gate
from bot.engine.refusals import RefusalKind, Refused

log = logging.getLogger("rollback-bot.engine.plans")


def new_uid() -> str:
    return secrets.token_hex(16)


APP_FOLDER = "_app"  # where an app rollback's plans are kept: no service's name starts with "_"


class SharedPlans:
    def __init__(self, gate: Gate):
        self.gate = gate
        self.host = socket.gethostname()
        token = str(gate.fleet.settings.slack_bot_token or "")
        self.card_key = hashlib.sha256(b"rollback-bot plan card\0" + token.encode()).digest() if token else b""

    def board(self, service: str) -> PlanBoard:
        if service != APP:
            return self.gate.fleet.engine(service).plans
        a = self.gate.fleet.default.artifacts
        return PlanBoard(a.s3, a.bucket, a.prefix, APP, folder=APP_FOLDER)

    def _board(self, job: Job) -> PlanBoard:
        return self.board(self.gate.job_key(job).service)

    def create(self, **fields) -> Job:
        """A new pending plan: its job in this bot's store and its ticket in S3, posted before any card can
        name it. Raises Refused (and the plan is withdrawn) when S3 cannot take it."""
        job = self.gate.store.job(self.gate.store.create_job(uid=new_uid(), state=JobState.PENDING, **fields))
        try:
            self.post(job)
        except BoardUnavailable as exc:
            self.gate.store.update_job(job.id, state=JobState.WITHDRAWN, finished=self.gate.clock(), reason=str(exc))
            raise Refused(str(exc), RefusalKind.BUSY) from exc
        return job

    def post(self, job: Job) -> None:
        """The plan's ticket, before anyone can see a button naming it. Raises BoardUnavailable."""
        if not job.uid:
            return
        self._board(job).post(PlanTicket(
            uid=job.uid, service=self.gate.job_key(job).service, stage=job.stage, state=TicketState.PENDING,
            target_commit=job.target_commit, target_build=job.target_build, live_commit=job.live_commit,
            live_build=job.live_build, requested_by=job.requested_by, origin=job.origin, channel=job.channel,
            message_ts=job.message_ts, plan_json=job.plan_json, created=job.created, expires=job.expires,
            stack_name=job.stack_name, region=job.region, policy=job.policy))

    def attach(self, job: Job) -> None:
        """Where its card is, so a replica that did not post it can check a click is on that card."""
        if job.uid:
            mac = card_mac(self.card_key, job.uid, job.channel, job.message_ts) if self.card_key else ""
            self._board(job).change(job.stage, job.uid, lambda t: replace(
                t, channel=job.channel, message_ts=job.message_ts, card_mac=mac)
                if t.state is TicketState.PENDING else None)

    def resolve(self, job_id: int, ref: PlanRef | None) -> int:
        """The local job a button names: by its plan's uid when it has one (the job numbers of replicas
        differ), taken from the plan's ticket when another replica posted it."""
        if ref is None or not ref.uid:
            return job_id
        job = self.gate.store.job_by_uid(ref.uid)
        if job is not None:
            return job.id
        try:
            key = self.key_of(ref)
            found = self.board(key.service).read(key.stage, ref.uid)
        except (UnknownService, TicketFormatError) as exc:
            raise Refused("That plan is not one of this bot's.", RefusalKind.GONE) from exc
        if found is None:
            raise Refused("That plan no longer exists.", RefusalKind.GONE)
        t = found[0]
        if t.digest != ref.digest:  # the card's button says what it showed, and Slack signed what came back
            log.warning("plan %s: its ticket in S3 does not match its card (changed in the bucket?)", t.uid)
            raise Refused("That plan's record in S3 is not what its card showed: someone changed it in the bucket. "
                          "Nothing was deployed; request the rollback again.", RefusalKind.GONE)
        log.info("plan %s (%s %s) was posted by another replica (%s); taking it from S3", t.uid, t.service, t.stage,
                 t.closed_on or "?")
        return self.gate.store.create_job(
            service=key.service, stage=key.stage, uid=t.uid, state=JobState.PENDING, target_commit=t.target_commit,
            target_build=t.target_build, live_commit=t.live_commit, live_build=t.live_build,
            requested_by=t.requested_by, origin=t.origin, channel=t.channel, message_ts=t.message_ts,
            created=t.created, expires=t.expires, stack_name=t.stack_name, region=t.region, plan_json=t.plan_json,
            policy=t.policy)

    def key_of(self, ref: PlanRef) -> StageKey:
        if ref.service == APP:
            return StageKey(APP, self.gate.stage(StageKey(APP, ref.stage)))
        return self.gate.key(ref.stage, ref.service or None)

    def close(self, job: Job, to: TicketState, by: str) -> None:
        """pending → ``to`` in S3, once among every replica; Refused naming who did it first otherwise."""
        if not job.uid:
            return
        try:
            won, ticket = self._board(job).close(job.stage, job.uid, TicketState.PENDING, to, by, self.host)
        except (BoardUnavailable, TicketFormatError) as exc:
            raise Refused(f"{exc}", RefusalKind.BUSY) from exc
        if won:
            return
        if ticket is None:
            raise Refused("That plan no longer exists.", RefusalKind.GONE)
        who = plain_name(ticket.closed_by)
        said = {TicketState.APPROVED: f"Someone already approved this plan ({who}, on {plain_name(ticket.closed_on)})",
                TicketState.WITHDRAWN: f"This plan was cancelled ({who})",
                TicketState.EXPIRED: "This plan expired"}.get(ticket.state, "This plan is closed")
        raise Refused(f"{said}. Nothing was deployed by this click.", RefusalKind.CLOSED)

    def approved_elsewhere(self, job: Job) -> PlanTicket | None:
        """For the sweep of expired plans: the ticket, when another replica approved or withdrew it."""
        if not job.uid:
            return None
        try:
            found = self._board(job).read(job.stage, job.uid)
        except (BoardUnavailable, TicketFormatError):
            return None
        return found[0] if found and found[0].state in (TicketState.APPROVED, TicketState.WITHDRAWN) else None

    def claim_interrupted(self, job: Job) -> bool:
        """Whether this replica is the one to say that ``job`` was interrupted (its ticket says who did first).
        When S3 cannot say, True: said twice is better than never said."""
        if not job.uid:
            return True
        try:
            won, ticket = self._board(job).interrupted(job.stage, job.uid, self.host)
        except (BoardUnavailable, TicketFormatError):
            return True
        return won or ticket is None

    def ticket(self, ref: PlanRef) -> PlanTicket | None:
        key = self.key_of(ref)
        found = self.board(key.service).read(key.stage, ref.uid)
        return found[0] if found else None

    def ask_cancel(self, ref: PlanRef, by: str) -> PlanTicket | None:
        key = self.key_of(ref)
        return self.board(key.service).ask_cancel(key.stage, ref.uid, by)[1]

    def cancel_asked(self, job: Job) -> str:
        """Who asked, on another replica, to cancel the job of this plan ("" when nobody, or S3 cannot say)."""
        if not job.uid:
            return ""
        try:
            found = self._board(job).read(job.stage, job.uid)
        except (BoardUnavailable, TicketFormatError):
            return ""
        return found[0].cancel_by if found else ""

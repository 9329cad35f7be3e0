"""A pending plan as every replica sees it: ``<prefix><service>/<stage>/plans/<uid>.json`` in S3.

Slack delivers a click to any replica (any Socket Mode connection, any HTTP replica behind a load
balancer), and only the replica that posted the card has the plan in its sqlite. So the plan and the
one state change that matters, pending → approved (or withdrawn, or expired), are kept in S3 too,
changed only with ``IfMatch`` on the ETag read: of two clicks on two replicas, exactly one wins.

Read back from a bucket others can write to, a ticket is untrusted input: bounded, typed, checked
against the button that names it (service, stage, uid), and what it carries is planned again and
compared before anything deploys, as for a local plan.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, replace
from enum import StrEnum

MAX_TICKET_BYTES = 256 * 1024
UID_RE = re.compile(r"^[0-9a-f]{16,32}$")


class TicketFormatError(ValueError):
    pass


class TicketState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


def plan_digest(target_commit: str, target_build: str, live_commit: str, live_build: str, plan_json: str) -> str:
    """What a card showed, in 16 hex digits: its buttons carry it (Slack signs what comes back), so a ticket
    a writer of the bucket changed after the card was posted is told apart and approves nothing."""
    raw = json.dumps([target_commit, target_build, live_commit, live_build, plan_json])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def card_mac(key: bytes, uid: str, channel: str, ts: str) -> str:
    """Where a plan's card is, signed with a key every replica has and a writer of the bucket has not (made
    from the Slack bot token): a replica that edits a card it did not post (its bot died) edits only that."""
    return hmac.new(key, json.dumps([uid, channel, ts]).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class PlanRef:
    """What a button names of a shared plan: its uid, where its ticket is, and the digest of what it showed."""

    uid: str
    service: str
    stage: str
    digest: str = ""


@dataclass(frozen=True)
class PlanTicket:
    uid: str  # random, the plan's own: what its buttons name, whatever replica posted them
    service: str
    stage: str
    state: TicketState
    target_commit: str
    target_build: str
    live_commit: str
    live_build: str
    requested_by: str
    origin: str
    channel: str
    message_ts: str
    plan_json: str  # what the card showed (bot.core.cards): what an approval approves
    created: float
    expires: float
    stack_name: str = ""
    region: str = ""
    policy: str = ""
    closed_by: str = ""  # who approved, withdrew it ("rollback-bot" for an expiry)
    closed_on: str = ""  # the host that did
    cancel_by: str = ""  # a Cancel of the running job clicked on a replica that does not run it
    interrupted_on: str = ""  # the replica that found its runner gone and said so in the channel
    card_mac: str = ""  # card_mac(key, uid, channel, ts) by the replica that posted the card

    def closed(self, state: TicketState, by: str, host: str) -> PlanTicket:
        return replace(self, state=state, closed_by=by, closed_on=host)

    def card_is_signed(self, key: bytes) -> bool:
        return bool(key and self.card_mac) and hmac.compare_digest(
            self.card_mac, card_mac(key, self.uid, self.channel, self.message_ts))

    @property
    def digest(self) -> str:
        return plan_digest(self.target_commit, self.target_build, self.live_commit, self.live_build, self.plan_json)

    @property
    def ref(self) -> PlanRef:
        return PlanRef(self.uid, self.service, self.stage, self.digest)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PlanTicket:
        if len(raw) > MAX_TICKET_BYTES:
            raise TicketFormatError(f"the plan's ticket is larger than {MAX_TICKET_BYTES} bytes")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TicketFormatError("the plan's ticket is not an object")
            text = {k: str(data.get(k, "")) for k in (
                "uid", "service", "stage", "target_commit", "target_build", "live_commit", "live_build",
                "requested_by", "origin", "channel", "message_ts", "plan_json", "stack_name", "region", "policy",
                "closed_by", "closed_on", "cancel_by", "interrupted_on", "card_mac")}
            ticket = cls(state=TicketState(data["state"]), created=float(data["created"]),
                         expires=float(data["expires"]), **text)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TicketFormatError):
                raise
            raise TicketFormatError(f"the plan's ticket is malformed ({exc.__class__.__name__})") from exc
        if not UID_RE.match(ticket.uid):
            raise TicketFormatError("the plan's ticket has no valid uid")
        return ticket

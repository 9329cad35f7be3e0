"""Refusals every face renders: the person cannot do this now, and why."""

from __future__ import annotations

from enum import StrEnum

from bot.core.errors import UserError
from bot.core.jobs import Job


class RefusalKind(StrEnum):
    NOT_ALLOWED = "not_allowed"  # the policy says no
    EXPIRED = "expired"  # the plan's buttons expired
    CLOSED = "closed"  # the plan or job is no longer open to this
    BUSY = "busy"  # another job holds the stage
    GONE = "gone"  # the plan or job does not exist
    LIMITED = "limited"  # too many requests
    OUTDATED = "outdated"  # the plan changed since the card


class Refused(UserError):
    """The person cannot do this now; the message says why and what to do instead."""

    def __init__(self, message: str, kind: RefusalKind | str = RefusalKind.NOT_ALLOWED):
        super().__init__(message)
        self.kind = RefusalKind(kind)


class Outdated(Refused):
    """What would run now differs from what the card showed; nothing was deployed. ``ref`` and
    ``service`` are what "Plan again" plans (``service`` is "*" for the whole app)."""

    def __init__(self, message: str, changes: list[str], job: Job, plan, ref: str = "", service: str = ""):
        super().__init__(message, RefusalKind.OUTDATED)
        self.changes = changes
        self.job = job
        self.plan = plan
        self.ref = ref
        self.service = service

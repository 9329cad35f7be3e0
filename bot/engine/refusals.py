"""Refusals every face renders: the person cannot do this now, and why."""

from __future__ import annotations

from bot.core.errors import UserError
from bot.core.jobs import Job


class Refused(UserError):
    """The person cannot do this now; the message says why and what to do instead."""

    def __init__(self, message: str, kind: str = "not_allowed"):
        super().__init__(message)
        self.kind = kind  # not_allowed | expired | closed | busy | gone | limited | outdated


class Outdated(Refused):
    """What would run now differs from what the card showed; nothing was deployed."""

    def __init__(self, message: str, changes: list[str], job: Job, plan):
        super().__init__(message, "outdated")
        self.changes = changes
        self.job = job
        self.plan = plan

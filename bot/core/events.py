"""A job's events: a step started, printed a line, finished (with its duration), failed or was skipped; and
how the job ended. The runner reports them, the bot stores and shows them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventStatus(StrEnum):
    STARTED = "started"
    OUTPUT = "output"
    FINISHED = "finished"
    FAILED = "failed"
    SKIPPED = "skipped"
    RECORDED = "recorded"  # the index took a job's result late, after retries
    STALE = "stale"  # …or never: the stage moved on while the job ran, and its result was dropped
    # the end of a job (step "job"): its final state
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    REFUSED = "refused"


@dataclass(frozen=True)
class Event:
    step: str
    status: EventStatus
    text: str = ""
    duration: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "status", EventStatus(self.status))  # a stray word fails where it is made

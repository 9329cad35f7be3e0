"""Jobs as data: a plan waits for a person; a run deploys. Their states and the legal moves between
them, written down once and enforced by the store.

    plan:  pending ─▶ approving ─▶ running (a run)
              │           ├──▶ outdated   (the plan changed before the click: nothing deployed)
              │           ├──▶ refused    (the stage was busy)
              │           └──▶ failed     (planning again failed)
              ├──▶ expired │ withdrawn
    run:   running ─▶ succeeded │ failed │ cancelled │ interrupted │ refused (busy at start)
    a service of an app rollback: approving ─▶ running, or ─▶ skipped (an earlier phase failed)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import IntEnum, StrEnum

from bot.core.cards import AppCard
from bot.core.plan_ticket import PlanRef, plan_digest

APP = "*"  # the service of an app rollback's own row (its services' jobs point to it with app_id)


class Recorded(IntEnum):
    """Whether a succeeded job's result reached index.json (the jobs table's ``recorded``)."""

    PENDING = 0  # not yet: retried in the background until it lands
    YES = 1
    STALE = 2  # never written: the stage moved on while it ran (another rollback, a CI deploy)


class JobState(StrEnum):
    PENDING = "pending"
    APPROVING = "approving"
    OUTDATED = "outdated"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    REFUSED = "refused"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"  # one service of an app rollback, never started because an earlier phase failed

    @property
    def final(self) -> bool:
        return not TRANSITIONS.get(self)


PLAN_STATES = frozenset({JobState.PENDING, JobState.APPROVING, JobState.OUTDATED, JobState.EXPIRED,
                         JobState.WITHDRAWN})
RUN_STATES = frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
                        JobState.INTERRUPTED})
ACTIVE_STATES = frozenset({JobState.PENDING, JobState.APPROVING, JobState.RUNNING})
FINAL_STATES = frozenset(set(JobState) - ACTIVE_STATES)
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.APPROVING, JobState.EXPIRED, JobState.WITHDRAWN}),
    JobState.APPROVING: frozenset({JobState.RUNNING, JobState.OUTDATED, JobState.REFUSED, JobState.FAILED,
                                   JobState.SKIPPED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED,
                                 JobState.REFUSED}),
}
STARTING_STATES = frozenset({JobState.PENDING, JobState.RUNNING})  # what a new job may be created as


class IllegalTransition(Exception):
    def __init__(self, job_id: int, before: str, after: str):
        super().__init__(f"job {job_id} cannot go from {before} to {after}")


def can_move(before: str, after: str) -> bool:
    return before == after or JobState(after) in TRANSITIONS.get(JobState(before), frozenset())


@dataclass(frozen=True)
class Job:
    """One job as the store keeps it: a plan, a run, an app rollback or one service's part of it."""

    id: int
    stage: str
    state: JobState
    service: str = ""
    target_commit: str = ""
    target_build: str = ""
    live_commit: str = ""
    live_build: str = ""
    requested_by: str = ""
    approved_by: str = ""
    cancelled_by: str = ""
    reason: str = ""
    origin: str = ""
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    channel: str = ""
    message_ts: str = ""
    permalink: str = ""  # the card in Slack, for history
    recorded: int | None = None
    unfreeze: int | None = None
    plan_json: str = ""
    app_id: int | None = None  # the app rollback this service's job is part of
    settle: str = ""  # after a rollback: whether the alarms stayed quiet (the card's last line)
    host: str = ""  # the machine and process that run it (a running job, or an app's run)
    pid: int | None = None
    pid_start: str = ""  # the runner's process start time, so a reused pid is not taken for it
    child_pid: int | None = None  # the job runner's process group, stopped on recovery
    child_start: str = ""  # its start time: a process that merely got the same pid is never signalled
    lease: str = ""  # the token of the stage lease in S3 it holds while it runs
    uid: str = ""  # a plan's id shared with every replica: its ticket in S3 (bot.core.plan_ticket)
    build_ref: str = ""  # run on CodeBuild: the build's id (project:uuid); "" on the bot's host
    log_token: str = ""  # how far the bot has read that build's log in CloudWatch Logs
    expires: float = 0.0  # a pending plan's deadline
    stack_name: str = ""
    region: str = ""
    stack_status: str = ""
    policy: str = ""
    output_dropped: int | None = None

    @classmethod
    def from_row(cls, row: dict) -> Job:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in names and v is not None}
        values["state"] = JobState(row["state"])
        return cls(**values)

    @property
    def plan_ref(self) -> PlanRef | None:
        """What its buttons name, when every replica shares the plan (its ticket in S3)."""
        if not self.uid:
            return None
        return PlanRef(self.uid, self.service, self.stage, plan_digest(
            self.target_commit, self.target_build, self.live_commit, self.live_build, self.plan_json))

    @property
    def ran(self) -> bool:
        return self.state in RUN_STATES

    @property
    def is_app(self) -> bool:
        """An app rollback: the row that stands for every service's job of one commit."""
        return self.service == APP

    @property
    def shown_service(self) -> str:
        """The service, when the bot serves several (its card names it); "" otherwise."""
        return str(self._shown.get("service", ""))

    @property
    def account(self) -> str:
        return str(self._shown.get("account", ""))

    @property
    def where(self) -> str:
        """``api prod`` on a bot of several services, ``prod`` on a bot of one; ``the app in prod``."""
        if self.is_app:
            return f"the app in {self.stage}"
        return f"{self.shown_service} {self.stage}" if self.shown_service else self.stage

    @property
    def app_card(self) -> AppCard:
        """What an app rollback's card showed (an empty card for one service's job)."""
        return AppCard.parse(self.plan_json) if self.is_app else AppCard("", "")

    @property
    def forward(self) -> bool:
        return bool(self._shown.get("forward"))

    @property
    def ref(self) -> str:
        """What the requester typed for the target (a commit, ``previous``, a tag), as the card showed it."""
        return str(self._shown.get("ref") or "")

    @property
    def _shown(self) -> dict:
        try:
            shown = json.loads(self.plan_json or "{}")
        except ValueError:
            return {}
        return shown if isinstance(shown, dict) else {}

    @property
    def commit_lines(self) -> list[list[str]]:
        """The commits the plan undid (or brought back): [sha, author, subject], as the card showed them."""
        lines = self._shown.get("commit_lines")
        return lines if isinstance(lines, list) else []

    @property
    def commit_count(self) -> int:
        count = self._shown.get("commit_count", len(self.commit_lines))
        return count if isinstance(count, int) else len(self.commit_lines)

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or self.started) - self.started

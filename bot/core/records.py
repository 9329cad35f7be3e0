"""The store's other records, as values: who holds a stage, what the alarm watch is watching, and the
audit trail. (Jobs are in ``bot.core.jobs``.) Each is read from a row the bot wrote itself; JSON columns
are read defensively, so a damaged row is an empty list, not a crash in a face."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum


def _json(text: str | None, default):
    try:
        value = json.loads(text or "null")
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


@dataclass(frozen=True)
class HeldLock:
    """A (service, stage) held by a running job."""

    service: str
    stage: str
    job_id: int | str  # "?" when the holder vanished between the refusal and the read
    holder: str = ""
    since: float = 0.0

    @classmethod
    def from_row(cls, row: dict) -> HeldLock:
        return cls(str(row.get("service") or ""), str(row["stage"]), row.get("job_id") or "?",
                   str(row.get("holder") or ""), float(row.get("since") or 0.0))


class WatchPurpose(StrEnum):
    DEPLOY = "deploy"  # a build CI deployed, in its window: an alarm offers (or runs) the rollback
    SETTLE = "settle"  # a rollback that just succeeded: do its alarms stay quiet?


class WatchState(StrEnum):
    WATCHING = "watching"
    ENDED = "ended"  # the deploy was replaced before its window closed
    DONE = "done"  # the window closed


@dataclass(frozen=True)
class Watch:
    id: int
    service: str
    stage: str
    kind: WatchPurpose
    commit_sha: str
    build: str
    since: float
    until: float
    state: WatchState = WatchState.WATCHING
    job_id: int | None = None  # the rollback settling (kind settle)
    acted_job: int | None = None  # the rollback an alarm started or offered; -1: decided not to
    failures: int = 0  # alarm reads that failed in a row (the next one backs off)
    next_check: float = 0.0
    in_alarm: tuple[str, ...] = ()  # the alarms in ALARM at the last read
    reported: frozenset[str] = field(default_factory=frozenset)  # alarms already posted about
    stack: str = ""  # the stack whose alarms it reads, as the build names it ("": Serverless's default)

    @classmethod
    def from_row(cls, row: dict) -> Watch:
        return cls(
            id=int(row["id"]), service=str(row.get("service") or ""), stage=str(row["stage"]),
            kind=WatchPurpose(row["kind"]), commit_sha=str(row.get("commit_sha") or ""),
            build=str(row.get("build") or ""), since=float(row.get("since") or 0.0),
            until=float(row.get("until") or 0.0), state=WatchState(row.get("state") or "watching"),
            job_id=row.get("job_id"), acted_job=row.get("acted_job"), failures=int(row.get("failures") or 0),
            next_check=float(row.get("next_check") or 0.0),
            in_alarm=tuple(str(a) for a in _json(row.get("in_alarm"), [])),
            reported=frozenset(str(a) for a in _json(row.get("reported"), [])), stack=str(row.get("stack") or ""))


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail: who did what, where, to which job, with what detail."""

    at: float
    actor: str
    action: str
    stage: str = ""
    service: str = ""
    job_id: int | None = None
    detail: dict = field(default_factory=dict)
    id: int = 0

    @classmethod
    def from_row(cls, row: dict) -> AuditEntry:
        return cls(at=float(row["at"]), actor=str(row.get("actor") or ""), action=str(row.get("action") or ""),
                   stage=str(row.get("stage") or ""), service=str(row.get("service") or ""),
                   job_id=row.get("job_id"), detail=_json(row.get("detail"), {}), id=int(row.get("id") or 0))

"""Action ids and what their buttons carry: one place, typed, so a button drawn in one module is
understood in another, and a value that is not ours is refused."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.core.plan_ticket import UID_RE, PlanRef

PLAN_BUILD = "plan_build"  # "Roll back to this", "Roll back" on a notification, "Plan again"
APPROVE = "approve"
CANCEL_PLAN = "cancel_plan"
CANCEL_JOB = "cancel_job"
LIFT_FREEZE = "lift_freeze"  # the checkbox on a roll forward's card
UNDO_APP = "undo_app"  # "Roll the finished services forward again" on an app rollback that stopped
LIST_BUILDS = "list_builds"  # a service's row in `/rollback prod` when the bot serves several


class NotOurs(ValueError):
    """A button value rollback-bot did not write."""


@dataclass(frozen=True)
class PlanRequest:
    """The value of a PLAN_BUILD button: plan ``ref`` on ``stage``. ``live`` is "commit:build" of the
    build that was live when the button was drawn (a deploy notification's), so a late click can say
    that it is no longer live."""

    stage: str
    ref: str
    live: str = ""
    service: str = ""  # "" on buttons of a one-service bot (and those drawn before services were named)

    def value(self) -> str:
        return json.dumps({"stage": self.stage, "ref": self.ref, **({"live": self.live} if self.live else {}),
                           **({"service": self.service} if self.service else {})})

    @classmethod
    def parse(cls, value: str) -> PlanRequest:
        try:
            data = json.loads(value)
            return cls(str(data["stage"]), str(data["ref"]), str(data.get("live", "")), str(data.get("service", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NotOurs(value) from exc


def job_value(job_id: int, ref: PlanRef | None = None) -> str:
    """The value of APPROVE, CANCEL_PLAN and CANCEL_JOB buttons: the job they were drawn for, and, for a plan
    every replica shares, its uid and stage (the job's number is the posting replica's own)."""
    if ref is None or not ref.uid:
        return str(job_id)
    return json.dumps({"job": job_id, "uid": ref.uid, "service": ref.service, "stage": ref.stage, "shows": ref.digest})


def parse_job(value: str) -> int:
    return parse_job_ref(value)[0]


def parse_job_ref(value: str) -> tuple[int, PlanRef | None]:
    try:
        if not str(value).startswith("{"):
            return int(value), None
        data = json.loads(value)
        ref = PlanRef(str(data["uid"]), str(data.get("service", "")), str(data["stage"]), str(data.get("shows", "")))
        if not UID_RE.match(ref.uid):
            raise ValueError("not a uid")
        return int(data["job"]), ref
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise NotOurs(value) from exc

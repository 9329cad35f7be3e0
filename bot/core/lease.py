"""The stage lease: who may deploy a (service, stage) right now, kept in S3 beside ``index.json`` as
``<prefix><service>/<stage>/lock.json`` so every replica, terminal and pipeline sees the same one.

The object is read back from a bucket others can write to, so it is parsed as untrusted input: bounded,
typed, its text fields cut and stripped of control characters before anyone shows them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass

MAX_LEASE_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class LeaseFormatError(ValueError):
    pass


def _text(value: object, limit: int = 120) -> str:
    return _CONTROL.sub("", str(value))[:limit]


@dataclass(frozen=True)
class Lease:
    service: str
    stage: str
    job: int  # the job's id in its own bot's sqlite (with host and data folder, it names the job)
    token: str  # random, this lease's own: only its holder knows it is theirs
    approved_by: str
    requested_by: str
    host: str
    pid: int
    origin: str  # slack, cli, app, watch
    since: float
    until: float  # the holder renews it before then; after it, anyone may take it over
    plan: str = ""  # the uid of the job's plan ticket (bot.core.plan_ticket): its card, for any replica

    def expired(self, now: float) -> bool:
        return now >= self.until

    def describe(self, names=lambda user: user) -> str:
        """'job 4 approved by Bo Ops, started 10:42 UTC on bot-1 (pid 31), lease until 10:44 UTC'."""
        def at(t: float) -> str:
            return time.strftime("%H:%M:%S UTC", time.gmtime(t))

        who = names(self.approved_by or self.requested_by) or "unknown"
        host = re.sub(r"[^\w.:-]", "?", self.host) or "?"  # read from the bucket: never markup
        return (f"job {self.job} approved by {who}, started {at(self.since)} on {host} "
                f"(pid {self.pid}), lease until {at(self.until)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes) -> Lease:
        if len(raw) > MAX_LEASE_BYTES:
            raise LeaseFormatError(f"lock.json is larger than {MAX_LEASE_BYTES} bytes")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise LeaseFormatError("lock.json is not an object")
            return cls(
                service=_text(data["service"]), stage=_text(data["stage"]), job=int(data["job"]),
                token=_text(data["token"], 64), approved_by=_text(data.get("approved_by", "")),
                requested_by=_text(data.get("requested_by", "")), host=_text(data.get("host", "")),
                pid=int(data.get("pid", 0)), origin=_text(data.get("origin", ""), 20),
                since=float(data["since"]), until=float(data["until"]), plan=_text(data.get("plan", ""), 32),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, LeaseFormatError):
                raise
            raise LeaseFormatError(f"lock.json is malformed ({exc.__class__.__name__}: {_text(exc, 80)})") from exc

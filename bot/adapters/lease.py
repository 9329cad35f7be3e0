"""The stage lease in S3 (``bot.core.lease``): created with ``IfNoneMatch="*"``, renewed by its holder
with ``IfMatch`` on the ETag it wrote, taken over only once expired (``IfMatch`` on the expired one's
ETag), deleted by its holder (``IfMatch`` again). The primitive Terraform 1.10+ keeps its state lock
with, and the one ``index.json`` is already written with: two writers can never both win.

Fails closed: when S3 cannot be reached, or ``lock.json`` cannot be read, no lease is taken and no
job starts.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters.store import StageBusy, plain_name
from bot.core.errors import UserError
from bot.core.keys import StageKey
from bot.core.lease import Lease, LeaseFormatError
from bot.core.records import HeldLock

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 120.0  # renewed every third of it; a dead holder's lease frees the stage after it
CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}


class LeaseUnavailable(UserError):
    """S3 could not be asked: nothing may start (another replica might hold the stage)."""


class LeaseLost(Exception):
    """The holder's lease is no longer its own (expired and taken over, or deleted)."""


@dataclass(frozen=True)
class Held:
    lease: Lease
    etag: str


def _conflict(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return err.get("Code") in CONFLICT or status in (409, 412)


class LeaseStore:
    def __init__(self, s3, bucket: str, prefix: str, service: str, ttl: float = DEFAULT_LEASE_SECONDS,
                 clock: Callable[[], float] = time.time, names: Callable[[str], str] = plain_name):
        self.s3, self.bucket, self.prefix, self.service = s3, bucket, prefix, service
        self.ttl, self.clock, self.names = ttl, clock, names

    def key(self, stage: str) -> str:
        return f"{self.prefix}{self.service}/{stage}/lock.json"

    def where(self, stage: str) -> str:
        return f"s3://{self.bucket}/{self.key(stage)}"

    def _unavailable(self, stage: str, doing: str, exc: Exception) -> LeaseUnavailable:
        why = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else type(exc).__name__
        return LeaseUnavailable(f"could not {doing} the stage's lease ({self.where(stage)}: {why}). Nothing was "
                                "deployed: without it another bot or terminal could deploy the stage at the same "
                                "time. Try again when S3 answers")

    def read(self, stage: str) -> tuple[Lease | None, str | None]:
        """The lease and its ETag, or (None, None). Raises LeaseUnavailable, and LeaseFormatError for an
        object that is not a lease (it is nobody's to delete: a person must look)."""
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.key(stage))
            raw = resp["Body"].read(8192)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise self._unavailable(stage, "read", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(stage, "read", exc) from exc
        return Lease.from_json(raw), resp["ETag"]

    def current(self, stage: str) -> Lease | None:
        """The lease that holds the stage now (an expired one holds nothing)."""
        lease, _ = self.read(stage)
        return lease if lease is not None and not lease.expired(self.clock()) else None

    def _put(self, stage: str, lease: Lease, **cond) -> str:
        resp = self.s3.put_object(Bucket=self.bucket, Key=self.key(stage), Body=lease.to_json().encode(),
                                  ContentType="application/json", **cond)
        return resp["ETag"]

    def _busy(self, key: StageKey, lease: Lease, several: bool) -> StageBusy:
        what = f"{key.service} on {key.stage}" if several else f"stage {key.stage}"
        return StageBusy(key, HeldLock(key.service, key.stage, lease.job, lease.approved_by, lease.since), several,
                         message=f"{what} is busy: a rollback holds it ({lease.describe(self.names)}). Wait for "
                                 "it to finish, or cancel it where it runs")

    def acquire(self, stage: str, job: int, approved_by: str, requested_by: str, origin: str, pid: int,
                several: bool = False, plan: str = "") -> Held:
        """Take the stage, or raise StageBusy naming the holder (LeaseUnavailable when S3 cannot say)."""
        key = StageKey(self.service, stage)
        now = self.clock()
        mine = Lease(service=self.service, stage=stage, job=job, token=secrets.token_hex(16), approved_by=approved_by,
                     requested_by=requested_by, host=socket.gethostname(), pid=pid, origin=origin, since=now,
                     until=now + self.ttl, plan=plan)
        for _ in range(3):
            try:
                return Held(mine, self._put(stage, mine, IfNoneMatch="*"))
            except ClientError as exc:
                if not _conflict(exc):
                    raise self._unavailable(stage, "take", exc) from exc
            except BotoCoreError as exc:
                raise self._unavailable(stage, "take", exc) from exc
            try:
                theirs, etag = self.read(stage)
            except LeaseFormatError as exc:
                raise StageBusy(key, HeldLock(key.service, stage, "?"), several, message=(
                    f"stage {stage} cannot be taken: {exc} at {self.where(stage)}. Make sure no rollback runs, "
                    "then delete it")) from exc
            if theirs is None:
                continue  # released between our write and our read: try again
            if not theirs.expired(self.clock()):
                raise self._busy(key, theirs, several)
            try:  # expired: its holder is gone or stuck; take it over, unless someone else just did
                log.warning("taking over the expired lease of %s", theirs.describe())
                return Held(mine, self._put(stage, mine, IfMatch=etag))
            except ClientError as exc:
                if not _conflict(exc):
                    raise self._unavailable(stage, "take", exc) from exc
            except BotoCoreError as exc:
                raise self._unavailable(stage, "take", exc) from exc
        raise LeaseUnavailable(f"the lease of stage {stage} kept changing under us; nothing was deployed, try again")

    def adopt(self, stage: str, token: str, pid: int) -> Held:
        """Go on holding a lease a job recorded (its token) from this process: a bot that restarted while the
        job's CodeBuild build ran. Raises LeaseLost when the lease is gone or another job's."""
        lease, etag = self.read(stage)
        if lease is None or etag is None or lease.token != token:
            raise LeaseLost(f"the lease of stage {stage} is no longer this job's"
                            + (f" ({lease.describe(self.names)} holds it)" if lease else " (nobody holds it)"))
        mine = replace(lease, host=socket.gethostname(), pid=pid, until=self.clock() + self.ttl)
        try:
            return Held(mine, self._put(stage, mine, IfMatch=etag))
        except ClientError as exc:
            if _conflict(exc):
                raise LeaseLost(f"the lease of stage {stage} changed while this bot took it back") from exc
            raise self._unavailable(stage, "take back", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(stage, "take back", exc) from exc

    def renew(self, held: Held) -> Held:
        """Push the lease's end out by ttl. Raises LeaseLost when it is no longer ours."""
        lease = replace(held.lease, until=self.clock() + self.ttl)
        try:
            return Held(lease, self._put(lease.stage, lease, IfMatch=held.etag))
        except ClientError as exc:
            if _conflict(exc) or exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise LeaseLost(f"the lease of stage {lease.stage} is no longer this job's") from exc
            raise

    def release(self, held: Held) -> bool:
        """Delete the lease if it is still ours (False: it was not, and nothing was deleted)."""
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(held.lease.stage), IfMatch=held.etag)
            return True
        except ClientError as exc:
            if _conflict(exc) or exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise

    def release_job(self, stage: str, token: str) -> bool:
        """Recovery: delete the lease of a job this bot recorded (by its token), if it still holds it."""
        lease, etag = self.read(stage)
        if lease is None or lease.token != token or etag is None:
            return False
        return self.release(Held(lease, etag))

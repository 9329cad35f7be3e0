"""Pending plans in S3 (``bot.core.plan_ticket``): posted with ``IfNoneMatch="*"``, changed only with
``IfMatch`` on the ETag read, so one state change wins however many replicas try. Fails closed: a
ticket that cannot be read or written approves nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from botocore.exceptions import BotoCoreError, ClientError

from bot.core.errors import UserError
from bot.core.plan_ticket import UID_RE, PlanTicket, TicketFormatError, TicketState

CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}


class BoardUnavailable(UserError):
    """S3 could not be asked about a plan: nothing is approved (another replica may hold it)."""


def _conflict(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return exc.response.get("Error", {}).get("Code") in CONFLICT or status in (409, 412)


class PlanBoard:
    def __init__(self, s3, bucket: str, prefix: str, service: str, folder: str = ""):
        self.s3, self.bucket, self.prefix, self.service = s3, bucket, prefix, service
        self.folder = folder or service  # the app's plans ("*") live under a folder no service can be named

    def key(self, stage: str, uid: str) -> str:
        if not UID_RE.match(uid):
            raise TicketFormatError("not a plan's uid")
        return f"{self.prefix}{self.folder}/{stage}/plans/{uid}.json"

    def _unavailable(self, doing: str, exc: Exception) -> BoardUnavailable:
        why = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else type(exc).__name__
        return BoardUnavailable(f"could not {doing} the plan in S3 ({why}). Nothing was deployed: another replica "
                                "of the bot may hold it. Try again when S3 answers")

    def post(self, ticket: PlanTicket) -> str:
        try:
            resp = self.s3.put_object(Bucket=self.bucket, Key=self.key(ticket.stage, ticket.uid),
                                      Body=ticket.to_json(), ContentType="application/json", IfNoneMatch="*")
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("record", exc) from exc
        return resp["ETag"]

    def read(self, stage: str, uid: str) -> tuple[PlanTicket, str] | None:
        """The ticket and its ETag; None when there is none. Raises TicketFormatError for one that is not
        a ticket of this service's stage (someone wrote it by hand), BoardUnavailable when S3 cannot say."""
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.key(stage, uid))
            raw = resp["Body"].read(300 * 1024)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._unavailable("read", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("read", exc) from exc
        ticket = PlanTicket.from_json(raw)
        if (ticket.service, ticket.stage, ticket.uid) != (self.service, stage, uid):
            raise TicketFormatError("the plan's ticket names another plan")
        return ticket, resp["ETag"]

    def change(self, stage: str, uid: str, edit: Callable[[PlanTicket], PlanTicket | None]
               ) -> tuple[bool, PlanTicket | None]:
        """Apply ``edit`` to the ticket as it is now, written only over what was read (tried again when
        another replica wrote in between); ``edit`` returns None to leave it. Returns whether this call
        wrote, and the ticket as it is after (None: there is no ticket)."""
        for _ in range(5):
            found = self.read(stage, uid)
            if found is None:
                return False, None
            ticket, etag = found
            new = edit(ticket)
            if new is None:
                return False, ticket
            try:
                self.s3.put_object(Bucket=self.bucket, Key=self.key(stage, uid), Body=new.to_json(),
                                   ContentType="application/json", IfMatch=etag)
                return True, new
            except ClientError as exc:
                if not _conflict(exc):
                    raise self._unavailable("change", exc) from exc
            except BotoCoreError as exc:
                raise self._unavailable("change", exc) from exc
        raise BoardUnavailable("the plan kept changing in S3 under us; nothing was deployed, try again")

    def close(self, stage: str, uid: str, frm: TicketState, to: TicketState, by: str, host: str
              ) -> tuple[bool, PlanTicket | None]:
        """pending → approved (withdrawn, expired), once: True for the one call that made the change."""
        return self.change(stage, uid, lambda t: t.closed(to, by, host) if t.state is frm else None)

    def ask_cancel(self, stage: str, uid: str, by: str) -> tuple[bool, PlanTicket | None]:
        """A Cancel clicked on a replica that does not run the job: the one that does sees it and stops it."""
        return self.change(stage, uid, lambda t: replace(t, cancel_by=by) if not t.cancel_by else None)

    def interrupted(self, stage: str, uid: str, host: str) -> tuple[bool, PlanTicket | None]:
        """Its runner is gone: True for the one replica that says so (and announces it)."""
        return self.change(stage, uid, lambda t: replace(t, interrupted_on=host) if not t.interrupted_on else None)

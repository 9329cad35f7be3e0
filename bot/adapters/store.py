"""Local state in sqlite (sqlite-utils): jobs, their events and output, stage locks, the audit trail.

Freezes and bad marks are not here: they live in the stage's index.json in S3, where CI can see them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlite_utils

from bot.core.errors import UserError
from bot.core.jobs import FINAL_STATES, STARTING_STATES, IllegalTransition, Job, can_move
from bot.core.keys import StageKey
from bot.core.masking import shorten
from bot.core.records import AuditEntry, HeldLock, Watch, WatchState

OUTPUT_HEAD = 2000  # lines of a job's output kept in sqlite from its start…
OUTPUT_TAIL = 3000  # …and from its end; the full log is on disk (jobs' log files)

# Each entry migrates the schema from version i to i+1; append, never edit.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def _migration(fn):
    MIGRATIONS.append(fn)
    return fn


@_migration
def _v1(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {
            "id": int, "stage": str, "target_commit": str, "target_build": str,
            "live_commit": str, "live_build": str, "requested_by": str, "approved_by": str,
            "state": str, "reason": str, "origin": str, "created": float, "started": float,
            "finished": float, "stack_name": str, "region": str, "stack_status": str,
            "host": str, "pid": int, "child_pid": int, "cancelled_by": str, "expires": float,
            "channel": str, "message_ts": str,
        },
        pk="id",
    )
    db["jobs"].create_index(["stage", "created"])
    db["jobs"].create_index(["state"])
    db["events"].create(
        {"id": int, "job_id": int, "at": float, "step": str, "status": str, "text": str, "duration": float},
        pk="id", foreign_keys=[("job_id", "jobs", "id")],
    )
    db["events"].create_index(["job_id"])
    db["output"].create(
        {"id": int, "job_id": int, "step": str, "line": str}, pk="id", foreign_keys=[("job_id", "jobs", "id")]
    )
    db["output"].create_index(["job_id"])
    db["locks"].create({"stage": str, "job_id": int, "holder": str, "since": float}, pk="stage")
    db["audit"].create(
        {"id": int, "at": float, "actor": str, "action": str, "stage": str, "job_id": int, "detail": str},
        pk="id",
    )
    db["audit"].create_index(["stage", "at"])


@_migration
def _v2(db: sqlite_utils.Database) -> None:
    # plan_json: what the plan card showed, compared at the click; pid_start: the runner's process
    # start time, so a reused pid is not taken for it; recorded: whether index.json took the result.
    db["jobs"].add_column("plan_json", str)
    db["jobs"].add_column("pid_start", str)
    db["jobs"].add_column("recorded", int)
    db["jobs"].add_column("unfreeze", int)
    db["jobs"].add_column("output_dropped", int)
    db["jobs"].add_column("policy", str)
    db["audit"].create_index(["at"])


@_migration
def _v3(db: sqlite_utils.Database) -> None:
    # permalink: the card's Slack link, for history in every face; people: the names of Slack user
    # ids (users.info), so the CLI and exports show names without asking Slack each time.
    db["jobs"].add_column("permalink", str)
    db["people"].create({"id": str, "name": str, "fetched": float}, pk="id")


@_migration
def _v4(db: sqlite_utils.Database) -> None:
    # One bot, many services: jobs, audit entries and locks name their service. Rows written before
    # are given the bot's one service when the store is opened (the migration cannot know it).
    db["jobs"].add_column("service", str)
    db["audit"].add_column("service", str)
    db["jobs"].create_index(["service", "stage", "created"])
    db["stage_locks"].create({"service": str, "stage": str, "job_id": int, "holder": str, "since": float},
                             pk=("service", "stage"))


@_migration
def _v5(db: sqlite_utils.Database) -> None:
    # app rollbacks: one row for the app (service "*"), and each service's job points to it
    db["jobs"].add_column("app_id", int)
    db["jobs"].create_index(["app_id"])


@_migration
def _v6(db: sqlite_utils.Database) -> None:
    # the alarm watch: one row per deploy watched (its window) or rollback settling; jobs gain the
    # settle verdict their card ends with
    db["watches"].create({"id": int, "service": str, "stage": str, "kind": str, "commit_sha": str, "build": str,
                          "since": float, "until": float, "job_id": int, "state": str, "reported": str,
                          "acted_job": int, "failures": int, "next_check": float, "in_alarm": str}, pk="id")
    db["watches"].create_index(["state"])
    db["jobs"].add_column("settle", str)


@_migration
def _v7(db: sqlite_utils.Database) -> None:
    # child_start: when the job's runner process started, so recovery never signals a process that only
    # got its pid again
    db["jobs"].add_column("child_start", str)


@_migration
def _v8(db: sqlite_utils.Database) -> None:
    # the stack a watch reads alarms of, as the build names it (provider.stackName honoured)
    db["watches"].add_column("stack", str)


@_migration
def _v9(db: sqlite_utils.Database) -> None:
    # the token of the stage lease in S3 a running job holds (bot.adapters.lease), so recovery frees only its own
    db["jobs"].add_column("lease", str)


@_migration
def _v10(db: sqlite_utils.Database) -> None:
    # builds this bot itself saw live (a rollback's verify, or a CI deploy it watched go live), the only
    # ones an automatic rollback may go to: kept here, where a writer of the bucket cannot add one
    db["seen_live"].create({"service": str, "stage": str, "commit_sha": str, "build": str, "sha256": str,
                            "how": str, "at": float}, pk=("service", "stage", "commit_sha", "build", "sha256"))


@_migration
def _v11(db: sqlite_utils.Database) -> None:
    # a job run as a CodeBuild build (bot.core.executor): the build, and how far its log was read, so a bot
    # that restarts (or another replica) reattaches to it instead of calling it interrupted
    db["jobs"].add_column("build_ref", str)
    db["jobs"].add_column("log_token", str)


@_migration
def _v12(db: sqlite_utils.Database) -> None:
    # a plan's id shared by every replica (its ticket in S3, bot.core.plan_ticket): what its buttons name
    db["jobs"].add_column("uid", str)
    db["jobs"].create_index(["uid"])


class StageBusy(UserError):
    def __init__(self, key: StageKey, lock: HeldLock, several: bool = False, message: str = ""):
        self.key = key
        self.stage = key.stage
        self.lock = lock
        what = f"{key.service} on {key.stage}" if several else f"stage {key.stage}"
        super().__init__(message or (
            f"{what} is busy: job {lock.job_id} started by {plain_name(lock.holder)} "
            f"is running. Wait for it, or cancel it first"
        ))


def plain_name(who: str | None) -> str:
    """A lock holder as refusals quote it: a person, CI or ``alarm:<name>`` (an alarm's name comes from
    CloudWatch). Refusals are the bot's own words in every face, so nothing in it may be markup."""
    s = re.sub(r"[^\w.:@/+= -]", "?", str(who or ""))[:120]
    return s or "someone"


class Store:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 mask: Callable[[str], str] = lambda text: text, default_service: str = "", several: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.mask = mask  # everything stored is masked: reasons, output, audit details
        self._out_counts: dict[int, int] = {}
        # One connection shared by the worker threads, serialised by our lock; WAL lets a CLI
        # process read while the bot writes.
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        with self._lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the bot in WAL mode
            self._migrate()
            if default_service:
                self._adopt(default_service)
        self.several = several  # several services: messages name the service
        self.default_service = default_service

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        for step in MIGRATIONS[version:]:
            with self.db.conn:
                step(self.db)
                version += 1
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", [str(version)]
                )

    def _adopt(self, service: str) -> None:
        """Rows from before services were named belong to the bot's one service."""
        with self.db.conn:
            self.db.execute("UPDATE jobs SET service = ? WHERE service IS NULL", [service])
            self.db.execute("UPDATE audit SET service = ? WHERE service IS NULL AND stage != ''", [service])
            if self.db["locks"].exists():
                self.db.execute("INSERT OR IGNORE INTO stage_locks (service, stage, job_id, holder, since) "
                                "SELECT ?, stage, job_id, holder, since FROM locks", [service])
                self.db.execute("DELETE FROM locks")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    # -- jobs ------------------------------------------------------------------------------------

    def create_job(self, **fields) -> int:
        fields.setdefault("state", "pending")
        if self.default_service:
            fields.setdefault("service", self.default_service)
        if fields["state"] not in STARTING_STATES:
            raise IllegalTransition(0, "nothing", fields["state"])
        with self._lock:
            fields.setdefault("created", self.clock())
            return self.db["jobs"].insert(fields).last_pk

    def job(self, job_id: int) -> Job | None:
        with self._lock:
            rows = list(self.db["jobs"].rows_where("id = ?", [job_id]))
        return Job.from_row(rows[0]) if rows else None

    def job_by_uid(self, uid: str) -> Job | None:
        """The job of a plan shared with other replicas (its ticket's uid), if this bot has it."""
        if not uid:
            return None
        with self._lock:
            rows = list(self.db["jobs"].rows_where("uid = ?", [uid], limit=1))
        return Job.from_row(rows[0]) if rows else None

    def update_job(self, job_id: int, **fields) -> None:
        if isinstance(fields.get("reason"), str):
            fields["reason"] = self.mask(fields["reason"])
        with self._lock:
            if "state" in fields:  # the legal moves are in bot.core.jobs; nothing else decides them
                row = self.db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
                if row and not can_move(row[0], fields["state"]):
                    raise IllegalTransition(job_id, row[0], fields["state"])
            self.db["jobs"].update(job_id, fields)

    def claim(self, job_id: int, from_state: str, to_state: str, **fields) -> bool:
        """Move a job from one state to another only if it is still in the first: of two
        concurrent callers exactly one gets True."""
        if not can_move(from_state, to_state):
            raise IllegalTransition(job_id, from_state, to_state)
        with self._lock:
            cur = self.db.execute(
                f"UPDATE jobs SET state = ?{''.join(f', {k} = ?' for k in fields)} WHERE id = ? AND state = ?",
                [to_state, *fields.values(), job_id, from_state],
            )
            return cur.rowcount == 1

    def jobs(self, stage: str | None = None, states: Iterable[str] | None = None, limit: int = 20,
             service: str | None = None, app_parts: bool = True) -> list[Job]:
        """Newest first. ``app_parts=False`` leaves out the services' jobs of app rollbacks (history shows
        the app's own row, with its services)."""
        where, args = [], []
        if not app_parts:
            where.append("app_id IS NULL")
        if service:
            where.append("service = ?")
            args.append(service)
        if stage:
            where.append("stage = ?")
            args.append(stage)
        if states:
            states = list(states)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += states
        with self._lock:
            rows = list(self.db["jobs"].rows_where(" AND ".join(where) or None, args, order_by="id DESC",
                                                   limit=limit))
        return [Job.from_row(r) for r in rows]

    # -- events and output -----------------------------------------------------------------------

    def add_event(self, job_id: int, step: str, status: str, text: str = "", duration: float | None = None) -> None:
        with self._lock:
            self.db["events"].insert(
                {"job_id": job_id, "at": self.clock(), "step": step, "status": status, "text": self.mask(text),
                 "duration": duration}
            )

    def events(self, job_id: int) -> list[dict]:
        with self._lock:
            return list(self.db["events"].rows_where("job_id = ?", [job_id], order_by="id"))

    def add_output(self, job_id: int, step: str, lines: list[str]) -> None:
        """Keep the first OUTPUT_HEAD and the last OUTPUT_TAIL lines: a deploy printing a million
        lines costs sqlite a bounded amount (the full log is on disk)."""
        with self._lock:
            self.db["output"].insert_all(
                {"job_id": job_id, "step": step, "line": shorten(self.mask(line), 4000)} for line in lines)
            count = self._out_counts.get(job_id)
            if count is None:
                count = self.db.execute("SELECT COUNT(*) FROM output WHERE job_id = ?", [job_id]).fetchone()[0]
            else:
                count += len(lines)
            if count > OUTPUT_HEAD + OUTPUT_TAIL + 500:  # trim in batches, not per line
                cur = self.db.execute(
                    "DELETE FROM output WHERE job_id = ? AND id > (SELECT id FROM output WHERE job_id = ? "
                    "ORDER BY id LIMIT 1 OFFSET ?) AND id <= (SELECT id FROM output WHERE job_id = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    [job_id, job_id, OUTPUT_HEAD - 1, job_id, OUTPUT_TAIL])
                self.db.execute("UPDATE jobs SET output_dropped = COALESCE(output_dropped, 0) + ? WHERE id = ?",
                                [cur.rowcount, job_id])
                count -= cur.rowcount
            self._out_counts[job_id] = count

    def output_after(self, job_id: int, after: int, limit: int = 2000) -> list[tuple[int, str]]:
        """Lines stored after row ``after``: (row id, line), for following a job's output."""
        with self._lock:
            return [(r[0], r[1]) for r in self.db.execute(
                "SELECT id, line FROM output WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?", [job_id, after, limit])]

    def output(self, job_id: int) -> list[str]:
        """The stored lines; when the middle was dropped, a line says how many and where they are."""
        with self._lock:
            lines = [r[0] for r in self.db.execute("SELECT line FROM output WHERE job_id = ? ORDER BY id", [job_id])]
            row = self.db.execute("SELECT output_dropped FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row and row[0]:
            lines.insert(OUTPUT_HEAD, f"… {row[0]} lines not kept here; the job's log file has every line")
        return lines

    def log_tail(self, job_id: int, lines: int = 20) -> list[str]:
        with self._lock:
            rows = self.db.execute(
                "SELECT line FROM output WHERE job_id = ? ORDER BY id DESC LIMIT ?", [job_id, lines]
            ).fetchall()
        return [r[0] for r in reversed(rows)]

    # -- locks -----------------------------------------------------------------------------------

    def acquire_lock(self, key: StageKey, job_id: int, holder: str) -> None:
        """Take the lock of a service's stage for ``job_id``, or raise StageBusy naming who holds it."""
        with self._lock:
            try:
                self.db.execute(
                    "INSERT INTO stage_locks (service, stage, job_id, holder, since) VALUES (?, ?, ?, ?, ?)",
                    [key.service, key.stage, job_id, holder, self.clock()],
                )
            except sqlite3.IntegrityError:
                raise StageBusy(key, self.lock_of(key) or HeldLock(key.service, key.stage, "?"), self.several) from None

    def acquire_locks(self, pairs: list[tuple[StageKey, int]], holder: str) -> None:
        """Take every lock, or none: the first busy one raises StageBusy naming its holder."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for key, job_id in pairs:
                    self.db.execute(
                        "INSERT INTO stage_locks (service, stage, job_id, holder, since) VALUES (?, ?, ?, ?, ?)",
                        [key.service, key.stage, job_id, holder, self.clock()])
            except sqlite3.IntegrityError:
                self.db.execute("ROLLBACK")
                busy = next(k for k, _ in pairs if self.lock_of(k))
                raise StageBusy(busy, self.lock_of(busy) or HeldLock(busy.service, busy.stage, "?"), True) from None
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- builds seen live ------------------------------------------------------------------------

    def note_seen_live(self, key: StageKey, commit: str, build: str, sha256: str, how: str) -> None:
        with self._lock:
            self.db["seen_live"].upsert({"service": key.service, "stage": key.stage, "commit_sha": commit,
                                         "build": build, "sha256": sha256, "how": how, "at": self.clock()},
                                        pk=("service", "stage", "commit_sha", "build", "sha256"))

    def seen_live(self, key: StageKey, commit: str, build: str, sha256: str) -> str:
        """How this bot saw that exact build (its package's sha256 too) live, or ""."""
        with self._lock:
            rows = list(self.db["seen_live"].rows_where(
                "service = ? AND stage = ? AND commit_sha = ? AND build = ? AND sha256 = ?",
                [key.service, key.stage, commit, build, sha256]))
        return str(rows[0]["how"]) if rows else ""

    # -- the alarm watch -------------------------------------------------------------------------

    def watch(self, service: str, stage: str, kind: str, since: float, job_id: int | None = None) -> Watch | None:
        with self._lock:
            rows = list(self.db["watches"].rows_where(
                "service = ? AND stage = ? AND kind = ? AND since = ? AND COALESCE(job_id, 0) = ?",
                [service, stage, kind, since, job_id or 0]))
        return Watch.from_row(rows[0]) if rows else None

    def add_watch(self, **fields) -> int:
        with self._lock:
            return self.db["watches"].insert({"state": WatchState.WATCHING, "reported": "[]", "failures": 0,
                                              "next_check": 0.0, "in_alarm": "[]", **fields}).last_pk

    def update_watch(self, watch_id: int, **fields) -> None:
        with self._lock:
            self.db["watches"].update(watch_id, fields)

    def watches(self, active: bool = True, limit: int = 200) -> list[Watch]:
        with self._lock:
            rows = list(self.db["watches"].rows_where("state = 'watching'" if active else None, [],
                                                      order_by="id DESC", limit=limit))
        return [Watch.from_row(r) for r in rows]

    def parts_of(self, app_id: int) -> list[Job]:
        """The services' jobs of an app rollback, in the order they were made (the phases' order)."""
        with self._lock:
            rows = list(self.db["jobs"].rows_where("app_id = ?", [app_id], order_by="id"))
        return [Job.from_row(r) for r in rows]

    def release_lock(self, key: StageKey, job_id: int) -> None:
        with self._lock:
            self.db.execute("DELETE FROM stage_locks WHERE service = ? AND stage = ? AND job_id = ?",
                            [key.service, key.stage, job_id])
            self._out_counts.pop(job_id, None)

    def lock_of(self, key: StageKey) -> HeldLock | None:
        with self._lock:
            rows = list(self.db["stage_locks"].rows_where("service = ? AND stage = ?", [key.service, key.stage]))
        return HeldLock.from_row(rows[0]) if rows else None

    def locks(self, service: str | None = None) -> list[HeldLock]:
        with self._lock:
            rows = list(self.db["stage_locks"].rows_where("service = ?", [service]) if service
                        else self.db["stage_locks"].rows)
        return [HeldLock.from_row(r) for r in rows]

    # -- audit -----------------------------------------------------------------------------------

    def person(self, user_id: str) -> dict | None:
        with self._lock:
            rows = list(self.db["people"].rows_where("id = ?", [user_id]))
        return rows[0] if rows else None

    def remember_person(self, user_id: str, name: str) -> None:
        with self._lock:
            self.db["people"].upsert({"id": user_id, "name": name, "fetched": self.clock()}, pk="id")

    def audit(self, actor: str, action: str, key: StageKey | None = None, job_id: int | None = None,
              **detail) -> None:
        with self._lock:
            self.db["audit"].insert(
                {"at": self.clock(), "actor": actor, "action": action, "stage": key.stage if key else "",
                 "service": key.service if key else None, "job_id": job_id,
                 "detail": self.mask(json.dumps(detail, sort_keys=True, default=str))}
            )

    def audit_since(self, since: float, key: StageKey | None = None) -> list[AuditEntry]:
        """Audit entries from ``since`` on, oldest first (an export for the incident review)."""
        where, args = "at >= ?", [since]
        if key:
            where += " AND service = ? AND stage = ?"
            args += [key.service, key.stage]
        with self._lock:
            rows = list(self.db["audit"].rows_where(where, args, order_by="id"))
        return [AuditEntry.from_row(r) for r in rows]

    def count_audit(self, actor: str, actions: Iterable[str], since: float) -> int:
        actions = list(actions)
        marks = ", ".join("?" * len(actions))
        with self._lock:
            return self.db.execute(f"SELECT COUNT(*) FROM audit WHERE actor = ? AND at >= ? AND action IN ({marks})",
                                   [actor, since, *actions]).fetchone()[0]

    def prune(self, before: float) -> dict[str, int]:
        """Forget finished jobs (with their events and output) and audit entries older than ``before``."""
        final = [str(state) for state in FINAL_STATES]
        marks = ", ".join("?" * len(final))
        with self._lock, self.db.conn:
            old = f"SELECT id FROM jobs WHERE COALESCE(finished, created) < ? AND state IN ({marks})"
            args = [before, *final]
            counts = {
                "output": self.db.execute(f"DELETE FROM output WHERE job_id IN ({old})", args).rowcount,
                "events": self.db.execute(f"DELETE FROM events WHERE job_id IN ({old})", args).rowcount,
                "jobs": self.db.execute(f"DELETE FROM jobs WHERE id IN ({old})", args).rowcount,
                "audit": self.db.execute("DELETE FROM audit WHERE at < ?", [before]).rowcount,
            }
        return counts

    def audit_trail(self, stage: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """The newest entries first."""
        with self._lock:
            rows = list(self.db["audit"].rows_where(
                "stage = ?" if stage else None, [stage] if stage else [], order_by="id DESC", limit=limit
            ))
        return [AuditEntry.from_row(r) for r in rows]

"""The alarm watch: every deploy the bot sees is watched for a window, and every rollback for a settle
period. An alarm entering ALARM in a deploy's window is reported (and, where the policy says
``auto_rollback``, rolled back without waiting for a person); a rollback's card ends saying whether
the alarms stayed quiet.

It polls each (service, stage) index it serves (one request each, answered 304 when nothing changed).
Deploy times are in the index and acted-on deploys in the store, so a restart resumes the watches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from bot.adapters.alarms import AlarmReader, AlarmState
from bot.adapters.archive import TEMPLATE_NAME
from bot.adapters.stack import STATE_NAME, PackageInfo
from bot.adapters.store import StageBusy
from bot.core.errors import UserError
from bot.core.jobs import Job
from bot.core.keys import StageKey
from bot.core.records import Watch, WatchPurpose, WatchState

log = logging.getLogger("rollback-bot.watch")
MAX_BACKOFF = 300.0
MAX_ALARM_POSTS = 5  # alarms a round says one by one; the rest of that round's in one summary
POST_QUEUE = 100  # posts waiting for Slack; past it they are dropped, counted, and the count said


class WatchKind(StrEnum):
    ALARM = "alarm"  # an alarm went into ALARM during a deploy's window
    AUTO = "auto"  # an automatic rollback was started, or skipped, and why
    SETTLED = "settled"  # the verdict on a rollback's settle period
    ERROR = "error"  # the alarms could not be read (said once per watch)
    SUMMARY = "summary"  # more alarms in one round than are said one by one (``keys`` names them all)


@dataclass
class WatchEvent:
    kind: WatchKind
    key: StageKey
    watch: Watch
    text: str
    alarm: AlarmState | None = None
    job_id: int | None = None
    keys: tuple[StageKey, ...] = ()  # a summary's stages


class Watcher:
    def __init__(self, service, reader: AlarmReader, poll: float = 15.0, window: float = 1800.0,
                 settle: float = 600.0, clock: Callable[[], float] = time.time):
        self.service = service  # the RollbackService: its fleet, store and policy
        self.reader = reader
        self.poll_every, self.window, self.settle = poll, window, settle
        self.clock = clock
        self.listeners: list[Callable[[WatchEvent], None]] = []
        self._stages: dict[str, list[str]] = {}
        self._polls = 0
        self._bad: set[tuple[str, str]] = set()  # (service, stage) unreadable: said once, until it reads again
        self._round: list[WatchEvent] = []  # what this round has to say, said when it ends
        self._posts: queue.Queue[WatchEvent | None] | None = None  # with run(): Slack never holds up a round
        self._dropped = 0

    @property
    def store(self):
        return self.service.store

    def _emit(self, event: WatchEvent) -> None:
        self._round.append(event)

    def _say(self, event: WatchEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a watch listener failed")

    def _end_round(self) -> None:
        """Say what the round found: an alarm flood in one summary past the first few, through the queue."""
        events, self._round = self._round, []
        alarms = [e for e in events if e.kind is WatchKind.ALARM]
        if len(alarms) > MAX_ALARM_POSTS:
            rest = alarms[MAX_ALARM_POSTS:]
            events = [e for e in events if not any(e is r for r in rest)]
            keys = tuple(dict.fromkeys(e.key for e in rest))
            events.append(WatchEvent(WatchKind.SUMMARY, rest[0].key, rest[0].watch,
                                     f"{len(rest)} more alarms went into ALARM in this round", keys=keys))
        if self._dropped and events and self._posts is not None and self._posts.qsize() < POST_QUEUE // 2:
            dropped, self._dropped = self._dropped, 0  # said once Slack keeps up again, with the next round's news
            log.error("the alarm watch dropped %d posts: Slack did not keep up", dropped)
            events.append(WatchEvent(WatchKind.ERROR, events[0].key, events[0].watch,
                                     f"{dropped} watch posts were dropped: Slack did not keep up. Look at the "
                                     "stages' alarms in CloudWatch"))
        for event in events:
            if self._posts is None:
                self._say(event)
                continue
            try:
                self._posts.put_nowait(event)
            except queue.Full:  # Slack is slower than the alarms: the round goes on, the count is said later
                self._dropped += 1

    def _post_loop(self) -> None:
        while True:
            event = self._posts.get()
            if event is None:
                return
            self._say(event)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._posts = queue.Queue(POST_QUEUE)
        poster = threading.Thread(target=self._post_loop, name="rollback-watch-posts", daemon=True)
        poster.start()
        try:
            while not stop.wait(self.poll_every):
                try:
                    self.poll()
                except Exception:
                    log.exception("the alarm watch failed a poll; trying again")
        finally:
            with contextlib.suppress(queue.Full):
                self._posts.put_nowait(None)

    def poll(self) -> None:
        """One round: new deploys start a watch; each running watch reads its alarms; ended ones close."""
        try:
            self._poll()
        finally:
            self._end_round()

    def _poll(self) -> None:
        now = self.clock()
        if self._polls % 20 == 0:  # the list of stages changes rarely; an index read is the cheap part
            for n, e in self.service.fleet.engines.items():
                try:
                    self._stages[n] = e.artifacts.stages()
                except Exception as exc:  # one service's folder unreadable: the others are still watched
                    self._unreadable((n, "*"), exc)
        self._polls += 1
        lives = {}
        for name, stages in self._stages.items():
            engine = self.service.fleet.engine(name)
            for stage in stages:
                try:
                    live = engine.artifacts.read_index(stage).live  # one request; 304 when unchanged
                except Exception as exc:  # a malformed or unreadable index: said once, never stops the rest
                    self._unreadable((name, stage), exc)
                    continue
                self._bad.discard((name, stage))
                lives[(name, stage)] = (live.commit, live.build_id) if live else None
                if live is None or live.via != "deploy" or now - live.at >= self.window:
                    continue  # a deploy by CI, still inside its window (a rollback's result is not re-watched)
                if self.store.watch(name, stage, WatchPurpose.DEPLOY, live.at) is None:
                    self._note_seen(engine, StageKey(name, stage), live)
                    self.store.add_watch(service=name, stage=stage, kind=WatchPurpose.DEPLOY, commit_sha=live.commit,
                                         build=live.build_id, since=live.at, until=live.at + self.window,
                                         stack=self._stack_of(engine, stage, live.commit, live.build_id))
        for w in self.store.watches():
            moved_on = w.kind == WatchPurpose.DEPLOY and lives.get((w.service, w.stage), "?") not in (
                "?", (w.commit_sha, w.build))
            if moved_on:  # rolled back, or deployed over: this deploy's alarms are no longer its to report
                self.store.update_watch(w.id, state=WatchState.ENDED)
            elif now >= w.until:
                self._close(w)
            elif now >= w.next_check:
                self._check(w, now)

    def _note_seen(self, engine, key: StageKey, live) -> None:
        """A CI deploy this bot watched go live: an automatic rollback may later go back to it (the exact
        package: its sha256 as the index says now, when it went live)."""
        try:
            art = engine.artifacts.read_index(key.stage).find(live.commit, live.build_id)
        except Exception:
            art = None
        if art is not None:
            self.store.note_seen_live(key, art.commit, art.build_id, art.sha256, "watched going live through a CI "
                                      f"deploy at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(live.at))}")

    def _unreadable(self, where: tuple[str, str], exc: Exception) -> None:
        if where not in self._bad:
            self._bad.add(where)
            log.warning("the alarm watch cannot read %s %s (%s); watching the other stages", where[0], where[1],
                        str(exc)[:300])

    def settle_after(self, job: Job) -> None:
        """A rollback just succeeded: watch the same alarms for the settle period."""
        self.store.add_watch(service=job.service, stage=job.stage, kind=WatchPurpose.SETTLE,
                             commit_sha=job.target_commit, build=job.target_build, since=self.clock(),
                             until=self.clock() + self.settle, job_id=job.id, stack=job.stack_name or "")

    # -- one watch -------------------------------------------------------------------------------

    def _stack(self, w: Watch) -> str:
        return w.stack or stack_name(self.service, StageKey(w.service, w.stage))

    def _stack_of(self, engine, stage: str, commit: str, build: str) -> str:
        """The stack the build deploys to: its package's provider.stackName, when it names one (two ranged
        reads, once per watch); "" for Serverless's default name, or when the package cannot be read."""
        try:
            art = engine.artifacts.read_index(stage).find(commit, build)
            if art is None:
                return ""
            members = engine.artifacts.read_members(art, [TEMPLATE_NAME, STATE_NAME])
            return PackageInfo.parse(members.get(TEMPLATE_NAME), members.get(STATE_NAME),
                                     self.service.fleet.catalog.serverless_stage(stage), engine.service).stack_name
        except Exception:  # a watch with the default name beats no watch
            log.warning("could not read the stack name of %s %s", engine.service, build, exc_info=True)
            return ""

    def _check(self, w: Watch, now: float) -> None:
        key = StageKey(w.service, w.stage)
        try:
            alarms = self.reader.read(w.stage, w.service, self._stack(w))
        except Exception as exc:  # throttling or an outage: back off, and say so once per watch
            failures = w.failures + 1
            self.store.update_watch(w.id, failures=failures,
                                    next_check=now + min(MAX_BACKOFF, self.poll_every * 2 ** failures))
            if failures == 1:
                self._emit(WatchEvent(WatchKind.ERROR, key, w, f"cannot read the alarms of {key.service} {key.stage} "
                                                        f"({exc.__class__.__name__}: {str(exc)[:200]}); retrying "
                                                        "with backoff"))
            return
        if w.failures:
            self.store.update_watch(w.id, failures=0, next_check=0)
        in_alarm = [a for a in alarms if a.state == "ALARM"]
        self.store.update_watch(w.id, in_alarm=json.dumps([a.name for a in in_alarm]))
        if w.kind != WatchPurpose.DEPLOY:
            return
        reported = set(w.reported)
        for alarm in in_alarm:
            if alarm.name in reported or alarm.updated < w.since:
                continue  # already said, or in ALARM since before the deploy: not this deploy's doing
            reported.add(alarm.name)
            self.store.update_watch(w.id, reported=json.dumps(sorted(reported)))
            minutes = max(0, int((alarm.updated - w.since) // 60))
            self._emit(WatchEvent(WatchKind.ALARM, key, w, f"`{alarm.name}` went into ALARM {minutes} min after build "
                                                   f"{w.build} ({w.commit_sha[:7]}) went live.", alarm))
            if self.service.policy.auto_rollback(key.stage, key.service) and not w.acted_job:
                self._auto(w, key, alarm)
                w = self.store.watch(w.service, w.stage, WatchPurpose.DEPLOY, w.since) or w

    def _auto(self, w: Watch, key: StageKey, alarm: AlarmState) -> None:
        """Roll the deploy back without a person: never twice for one deploy, never when the live build
        came from a rollback, never while a job holds the stage or a person froze it."""
        engine = self.service.fleet.engine(key.service)
        index = engine.artifacts.read_index(key.stage)
        live = index.live
        why = ""
        if live is None or (live.commit, live.build_id) != (w.commit_sha, w.build) or live.via != "deploy":
            why = "the live build is no longer the one this alarm followed"
        elif index.freeze is not None:
            why = f"the stage is frozen by {index.freeze.by}"
        elif self.store.lock_of(key):
            why = f"job {self.store.lock_of(key).job_id} holds the stage"
        actor = f"alarm:{alarm.name}"
        if not why:
            try:
                plan = engine.plan(key.stage, "previous")
                if not self.store.seen_live(key, plan.target.commit, plan.target.build_id, plan.target.sha256):
                    raise UserError(
                        f"`previous` names {plan.target.label()}, which this bot never saw live (no rollback "
                        "verified it, and it did not watch a CI deploy of it go live): only a person may roll "
                        f"{key.stage} back to it. Use the button if it is right")
                job_id = engine.jobs.start(plan, requested_by=actor, approved_by=actor, origin="alarm",
                                           audit={"alarm": alarm.name, "alarm_reason": alarm.reason,
                                                  "policy": "auto_rollback"})
            except (UserError, StageBusy) as exc:
                why = str(exc)
            else:
                self.store.update_watch(w.id, acted_job=job_id)
                said = (f"`{alarm.name}` went into ALARM ({alarm.reason}): rolling {key.service} {key.stage} back "
                        f"to {plan.target.label()} without waiting for a person.")
                self._emit(WatchEvent(WatchKind.AUTO, key, w, said, alarm, job_id))
                return
        self.store.update_watch(w.id, acted_job=-1)  # decided once per deploy, either way
        self.store.audit(actor, "auto_rollback.skipped", key, None, reason=why)
        said = f"No automatic rollback of {key.service} {key.stage}: {why}."
        self._emit(WatchEvent(WatchKind.AUTO, key, w, said, alarm))

    def _close(self, w: Watch) -> None:
        self.store.update_watch(w.id, state=WatchState.DONE)
        if w.kind != WatchPurpose.SETTLE:
            return
        seconds = w.until - w.since
        span = f"{int(round(seconds / 60))} min" if seconds >= 120 else f"{int(seconds)} s"
        still = list(w.in_alarm)
        if still:
            text = (f"{', '.join(f'`{n}`' for n in still)} still in ALARM {span} after the rollback: the cause "
                    "may not be the deploy")
        else:
            text = f"alarms OK for {span} after the rollback"
        self.store.update_job(w.job_id, settle=text)
        self._emit(WatchEvent(WatchKind.SETTLED, StageKey(w.service, w.stage), w, text, job_id=w.job_id))


def alarm_reader(service) -> AlarmReader:
    """Each stage's alarms, read with that stage's credentials (its role's, or the bot's own)."""
    fleet = service.fleet

    def env_for(stage: str):
        if fleet.shared.uses_accounts:
            return fleet.shared.accounts.env_for(stage, f"rollback-bot-watch-{stage}")
        return fleet.settings.child_env

    return AlarmReader(fleet.catalog, env_for)


def stack_name(service, key: StageKey) -> str:
    """The stage's CloudFormation stack, as Serverless names it."""
    return f"{key.service}-{service.fleet.catalog.serverless_stage(key.stage)}"


def make_watcher(service, clock: Callable[[], float] = time.time) -> Watcher:
    """The watch of a rollback service; rollbacks that succeed settle under it."""
    settings = service.fleet.settings
    watcher = Watcher(service, alarm_reader(service), settings.watch_poll or 15, settings.watch_window,
                      settings.settle, clock)
    fleet = service.fleet

    def on_job_event(job_id: int, event) -> None:  # a rollback that succeeded settles under watch
        if event.step == "job" and event.status == "succeeded":
            job = service.store.job(job_id)
            if job and not job.forward:
                watcher.settle_after(job)

    for engine in fleet.engines.values():
        engine.jobs.listeners.append(on_job_event)
    return watcher

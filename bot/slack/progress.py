"""A rollback's progress in Slack, for one service's job and for an app rollback alike: the card edited
at most once every 2 s, the deploy output batched into its thread every 6 s (an app's labelled by
service), and the final state always delivered, however Slack behaves. Two views of one rhythm:
``ProgressReporter`` (one job's checklist) and ``AppReporter`` (a checklist per phase and service)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.core.jobs import Job, JobState
from bot.engine import STEPS, Event, EventStatus
from bot.slack import blocks as kit
from bot.slack.mrkdwn import esc
from bot.slack.notifier import Notifier

if TYPE_CHECKING:
    from bot.engine import RollbackService

log = logging.getLogger("rollback-bot.slack")
UPDATE_INTERVAL = 2.0  # Slack allows about one chat.update per second per message; we do half
THREAD_INTERVAL = 6.0  # thread posts: with the card edits, at most 40 calls a job minute
THREAD_CHARS = 3500
FINAL_RETRY_SECONDS = 600.0


def deliver_final(send: Callable[[], bool], clock: Callable[[], float]) -> bool:
    """The final state is always sent: retried with backoff for up to 10 minutes while Slack fails."""
    deadline, delay = clock() + FINAL_RETRY_SECONDS, 1.0
    while not send():
        if clock() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 30)
    return True


class ProgressReporter:
    """One per job; a listener of JobRunner, with its own sender thread so a slow or failing Slack
    never holds up the deploy."""

    def __init__(self, client, records: RollbackService, job_id: int, channel: str, ts: str,
                 clock: Callable[[], float] = time.monotonic, on_final: Callable[[Job], None] = lambda job: None,
                 start: bool = True, full_log: Callable[[], str] = lambda: ""):
        self.client = client
        self.notify = Notifier(client)
        self.records = records  # the service: jobs, their output and steps, as typed values
        self.job_id = job_id
        self.channel = channel
        self.ts = ts
        self.clock = clock
        self.on_final = on_final
        self.full_log = full_log  # the job's whole log (from its file), uploaded when it fails
        self.steps: dict[str, tuple[str, float | None]] = {}
        self.lines: list[str] = []
        self.skipped = 0
        self.dirty = True
        self.done = False
        self.last_update = -UPDATE_INTERVAL
        self.last_thread = self.clock()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name=f"slack-progress-{job_id}", daemon=True)
        if start:
            self.thread.start()

    def start(self) -> None:
        self.thread.start()

    def resume(self, steps: dict[str, tuple[str, float | None]], ended: bool) -> None:
        """A job followed again after a restart: the steps already recorded (and whether it ended meanwhile)."""
        with self.cond:
            self.steps = {**steps, **self.steps}
            self.dirty = True
            self.done = self.done or ended

    # -- fed by the job's worker thread: only memory, never I/O ------------------------------------

    def __call__(self, job_id: int, event: Event) -> None:
        if job_id != self.job_id:
            return
        with self.cond:
            if event.status is EventStatus.OUTPUT:
                self.lines.append(event.text)
                if len(self.lines) == 1:
                    self.cond.notify()
                return
            if event.step in STEPS:
                self.steps[event.step] = (event.status, event.duration)
                self.dirty = True
            elif event.step == "job" and event.status is not EventStatus.OUTPUT:
                self.done = True
            self.cond.notify()

    # -- the sender thread -----------------------------------------------------------------------

    def _next_due(self) -> float | None:
        """When there is next something to send; None when there is nothing to send."""
        due = []
        if self.dirty:
            due.append(self.last_update + UPDATE_INTERVAL)
        if self.lines:
            due.append(self.last_thread + THREAD_INTERVAL)
        return min(due) if due else None

    def _loop(self) -> None:
        while True:
            with self.cond:
                due = self._next_due()
                if not self.done and (due is None or due > self.clock()):
                    self.cond.wait(timeout=0.5 if due is None else min(0.5, due - self.clock()))
                    continue
                done = self.done
            if done:
                break
            now = self.clock()
            if self.dirty and now - self.last_update >= UPDATE_INTERVAL:
                self._update_card()
            if self.lines and now - self.last_thread >= THREAD_INTERVAL:
                self._post_lines()
        self._finish()

    def _update_card(self) -> bool:
        with self.cond:
            self.dirty = False
            steps = dict(self.steps)
        job = self.records.job(self.job_id)
        tail = self.records.log_tail(self.job_id, 15) if job.state is not JobState.RUNNING else []
        self.last_update = self.clock()
        if self.notify.update(self.channel, self.ts, f"Rollback job {self.job_id}: {job.state}",
                              kit.progress_blocks(job, steps, tail, time.time())):
            return True
        with self.cond:  # Slack down: the next update (or the final retry loop) will carry the state
            self.dirty = True
        return False

    def _post_lines(self) -> None:
        with self.cond:
            lines, self.lines = self.lines, []
        self.last_thread = self.clock()
        text, kept = "", 0
        for line in reversed(lines):  # keep the newest lines when a batch is too long
            line = esc(line)  # deploy output is data: no mention, link or end of the code block in it
            if len(text) + len(line) + 1 > THREAD_CHARS:
                break
            text = line + "\n" + text
            kept += 1
        dropped = len(lines) - kept
        header = f"…{dropped} earlier lines are in the job's full log\n" if dropped else ""
        # The stored log has every line; a batch lost in Slack is acceptable.
        self.notify.post(self.channel, f"{header}```{text}```", thread_ts=self.ts)

    def _finish(self) -> None:
        with self.cond:
            self.dirty = True
        if not deliver_final(self._update_card, self.clock):
            return
        if self.lines:
            self._post_lines()
        job = self.records.job(self.job_id)
        if job.state in (JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED):
            log = self.full_log() or "\n".join(self.records.output(self.job_id))
            self.notify.upload(self.channel, self.ts, log or "(no output)", f"rollback-job-{self.job_id}.log",
                               f"Full log of rollback job {self.job_id}")
        self.on_final(job)

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


class AppReporter:
    """One per app rollback; a listener of AppRollbacks. Each service's output goes to the thread with
    an equal share of each post, so the calls stay within 40 a job minute however many services move."""

    def __init__(self, notify: Notifier, records: RollbackService, app_id: int, channel: str, ts: str,
                 clock: Callable[[], float] = time.monotonic, on_final: Callable[[Job], None] = lambda job: None):
        self.notify, self.records, self.app_id, self.channel, self.ts = notify, records, app_id, channel, ts
        self.clock, self.on_final = clock, on_final
        self.seen: dict[int, int] = {}  # part job id -> the last output row posted
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"slack-app-{app_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def resume(self, steps: dict[str, tuple[str, float | None]], ended: bool) -> None:
        """A job followed again after a restart: the steps already recorded (and whether it ended meanwhile)."""
        with self.cond:
            self.steps = {**steps, **self.steps}
            self.dirty = True
            self.done = self.done or ended

    def __call__(self, app_id: int, what: str) -> None:  # an AppRollbacks listener
        if app_id == self.app_id:
            self.wake.set()

    def _card(self) -> bool:
        job = self.records.job(self.app_id)
        parts = self.records.parts(self.app_id)
        steps = {p.id: self.records.current_step(p.id) for p in parts if p.state is JobState.RUNNING}
        return self.notify.update(self.channel, self.ts, f"App rollback {self.app_id}: {job.state}",
                                  kit.app_progress_blocks(job, parts, steps, time.time()))

    def _thread(self) -> None:
        """New output of every service, labelled, in one post: each service with output gets an equal
        share of the message (its newest lines); every line is in the job logs."""
        batches = []
        for part in self.records.parts(self.app_id):
            rows = self.records.output_after(part.id, self.seen.get(part.id, 0))
            if rows:
                self.seen[part.id] = rows[-1][0]
                batches.append((part.service, [line for _, line in rows]))
        if not batches:
            return
        share = THREAD_CHARS // len(batches)
        text = ""
        for service, lines in batches:
            kept, size = [], 0
            for line in reversed(lines):
                labelled = f"[{service}] {line}"
                if size + len(labelled) + 1 > share:
                    break
                kept.append(labelled)
                size += len(labelled) + 1
            if len(kept) < len(lines):
                kept.append(f"[{service}] …{len(lines) - len(kept)} earlier lines are in its job's log")
            text += "\n".join(reversed(kept)) + "\n"
        self.notify.post(self.channel, "```" + esc(text) + "```", thread_ts=self.ts)

    def _loop(self) -> None:
        last_card, last_thread = -UPDATE_INTERVAL, self.clock()
        while True:
            self.wake.wait(UPDATE_INTERVAL)  # the app's events wake it: the end is seen at once
            self.wake.clear()
            if self.records.job(self.app_id).state is not JobState.RUNNING:
                break
            if self.clock() - last_card >= UPDATE_INTERVAL:  # at most one edit every 2 s
                self._card()
                last_card = self.clock()
            if self.clock() - last_thread >= THREAD_INTERVAL:
                self._thread()
                last_thread = self.clock()
        deliver_final(self._card, self.clock)
        self._thread()
        self.on_final(self.records.job(self.app_id))

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

"""Turn a job's events into Slack updates: the card edited at most once every 2 s, the deploy
output batched into its thread, and the final state always delivered, however Slack behaves."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bot.adapters.store import Store
from bot.core.jobs import Job, JobState
from bot.engine.pipeline import STEPS, Event
from bot.slack import blocks as kit
from bot.slack.mrkdwn import esc
from bot.slack.notifier import Notifier

log = logging.getLogger("rollback-bot.slack")
UPDATE_INTERVAL = 2.0  # Slack allows about one chat.update per second per message; we do half
THREAD_INTERVAL = 6.0  # thread posts: with the card edits, at most 40 calls a job minute
THREAD_CHARS = 3500
FINAL_RETRY_SECONDS = 600.0


class ProgressReporter:
    """One per job; a listener of JobRunner, with its own sender thread so a slow or failing Slack
    never holds up the deploy."""

    def __init__(self, client, store: Store, job_id: int, channel: str, ts: str,
                 clock: Callable[[], float] = time.monotonic, on_final: Callable[[dict], None] = lambda job: None,
                 start: bool = True, full_log: Callable[[], str] = lambda: ""):
        self.client = client
        self.notify = Notifier(client)
        self.store = store
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

    # -- fed by the job's worker thread: only memory, never I/O ------------------------------------

    def __call__(self, job_id: int, event: Event) -> None:
        if job_id != self.job_id:
            return
        with self.cond:
            if event.status == "output":
                self.lines.append(event.text)
                if len(self.lines) == 1:
                    self.cond.notify()
                return
            if event.step in STEPS:
                self.steps[event.step] = (event.status, event.duration)
                self.dirty = True
            elif event.step == "job" and event.status != "output":
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
        job = Job.from_row(self.store.job(self.job_id))
        tail = self.store.log_tail(self.job_id, 15) if job.state is not JobState.RUNNING else []
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
        deadline = self.clock() + FINAL_RETRY_SECONDS
        delay = 1.0
        with self.cond:
            self.dirty = True
        while not self._update_card():
            if self.clock() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 30)
        if self.lines:
            self._post_lines()
        job = self.store.job(self.job_id)
        if job["state"] in ("failed", "cancelled", "interrupted"):
            log = self.full_log() or "\n".join(self.store.output(self.job_id))
            self.notify.upload(self.channel, self.ts, log or "(no output)", f"rollback-job-{self.job_id}.log",
                               f"Full log of rollback job {self.job_id}")
        self.on_final(job)

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

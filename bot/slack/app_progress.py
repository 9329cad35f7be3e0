"""An app rollback's card and thread while it runs: the checklist edited at most every 2 s and each
service's deploy output posted to the thread every 6 s, labelled with the service. However many
services move, that stays within 40 Slack calls a job minute; the final state is always delivered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bot.adapters.store import Store
from bot.core.jobs import Job, JobState
from bot.slack import blocks as kit
from bot.slack.mrkdwn import esc
from bot.slack.notifier import Notifier

log = logging.getLogger("rollback-bot.slack")
CARD_EVERY = 2.0
THREAD_EVERY = 6.0
THREAD_CHARS = 3500
FINAL_RETRY_SECONDS = 600.0


class AppReporter:
    def __init__(self, notify: Notifier, store: Store, app_id: int, channel: str, ts: str,
                 clock: Callable[[], float] = time.monotonic, on_final: Callable[[dict], None] = lambda job: None):
        self.notify, self.store, self.app_id, self.channel, self.ts = notify, store, app_id, channel, ts
        self.clock, self.on_final = clock, on_final
        self.seen: dict[int, int] = {}  # part job id -> the last output row posted
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"slack-app-{app_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def __call__(self, app_id: int, what: str) -> None:  # an AppRollbacks listener
        if app_id == self.app_id:
            self.wake.set()

    def _card(self) -> bool:
        job = Job.from_row(self.store.job(self.app_id))
        parts = [Job.from_row(r) for r in self.store.parts_of(self.app_id)]
        steps = {}
        for p in parts:
            if p.state is JobState.RUNNING:
                events = [e for e in self.store.events(p.id) if e["status"] == "started"]
                steps[p.id] = events[-1]["step"] if events else "starting"
        return self.notify.update(self.channel, self.ts, f"App rollback {self.app_id}: {job.state}",
                                  kit.app_progress_blocks(job, parts, steps, time.time()))

    def _thread(self) -> None:
        """New output of every service, labelled, in one post: each service with output gets an equal
        share of the message (its newest lines); every line is in the job logs."""
        batches = []
        for part in self.store.parts_of(self.app_id):
            rows = self.store.output_after(part["id"], self.seen.get(part["id"], 0))
            if rows:
                self.seen[part["id"]] = rows[-1][0]
                batches.append((part["service"], [line for _, line in rows]))
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
        last_card, last_thread = -CARD_EVERY, self.clock()
        while True:
            self.wake.wait(CARD_EVERY)  # the app's events wake it: the end is seen at once
            self.wake.clear()
            if self.store.job(self.app_id)["state"] != JobState.RUNNING:
                break
            if self.clock() - last_card >= CARD_EVERY:  # at most one edit every 2 s
                self._card()
                last_card = self.clock()
            if self.clock() - last_thread >= THREAD_EVERY:
                self._thread()
                last_thread = self.clock()
        deadline, delay = self.clock() + FINAL_RETRY_SECONDS, 1.0
        while not self._card() and self.clock() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 30)
        self._thread()
        self.on_final(self.store.job(self.app_id))

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

"""What the alarm watch says in Slack: an alarm after a deploy (in the deploy notification's thread and
in the channel, with a button to roll back), an automatic rollback (with its live card), the
settle verdict as a rollback card's last line, and a CloudWatch problem once."""

from __future__ import annotations

import logging
import time

from bot.core.config import Settings
from bot.engine import WatchEvent
from bot.slack import blocks as kit
from bot.slack import ids
from bot.slack.mrkdwn import esc_message
from bot.slack.notifier import Notifier
from bot.slack.progress import ProgressReporter

log = logging.getLogger("rollback-bot.slack")


class WatchPoster:
    def __init__(self, notify: Notifier, service, settings: Settings):
        self.notify, self.service, self.settings = notify, service, settings

    def _channel(self, event: WatchEvent) -> str:
        return self.service.policy.notify_channel(event.key.stage, self.settings.channel, event.key.service)

    def __call__(self, event: WatchEvent) -> None:
        try:
            getattr(self, f"_{event.kind}")(event)
        except Exception:  # Slack or S3 trouble: the watch goes on; the job and the audit have the facts
            log.exception("could not post a watch event (%s)", event.kind)

    def _where(self, event: WatchEvent) -> str:
        return f"{event.key.service} {event.key.stage}" if self.service.several else event.key.stage

    def _alarm(self, event: WatchEvent) -> None:
        w = event.watch
        text = f"🚨 {esc_message(event.text)} ({esc_message(self._where(event))})"
        request = ids.PlanRequest(event.key.stage, "previous", f"{w.commit_sha}:{w.build}",
                                  event.key.service if self.service.several else "")
        blocks = [kit.section(text), kit.context(esc_message(event.alarm.reason if event.alarm else "")),
                  {"type": "actions", "elements": [
                      kit.button("Roll back to previous", ids.PLAN_BUILD, request.value(), "danger")]}]
        index = self.service.index(event.key)
        notice = next((r.notice_at for r in index.history if r.at == w.since and r.notice_at), None)
        allowed = self.service.policy.notice_channels(event.key.stage, self.settings.channel, event.key.service)
        if notice and notice[0] in allowed:  # in the deploy notification's thread too (if it is where it may be)
            self.notify.post(notice[0], text, blocks, thread_ts=notice[1])
        channel = self._channel(event)
        if channel:  # and in the channel, where people look
            self.notify.post(channel, text, blocks)

    def _summary(self, event: WatchEvent) -> None:
        """An alarm flood: one post per channel, naming its stages, instead of one post per alarm."""
        by_channel: dict[str, list[str]] = {}
        for key in event.keys:
            channel = self.service.policy.notify_channel(key.stage, self.settings.channel, key.service)
            if channel:
                where = f"{key.service} {key.stage}" if self.service.several else key.stage
                by_channel.setdefault(channel, []).append(where)
        for channel, stages in by_channel.items():
            shown = ", ".join(f"`{esc_message(s)}`" for s in stages[:20]) + (" …" if len(stages) > 20 else "")
            self.notify.post(channel, f"🚨 {esc_message(event.text)}, on {shown}. A stage's builds and the way "
                                      "back: `/rollback &lt;stage&gt;`.")

    def _auto(self, event: WatchEvent) -> None:
        channel = self._channel(event)
        if not channel:
            return
        self.notify.post(channel, f"🤖 {esc_message(event.text)}")
        if event.job_id is None:
            return
        job = self.service.job(event.job_id)
        posted = self.notify.post(channel, f"Rollback job {job.id}", kit.progress_blocks(job, {}, [], time.time()))
        if not posted:
            return
        self.service.attach_message(job.id, posted["channel"], posted["ts"],
                                    self.notify.permalink(posted["channel"], posted["ts"]))
        reporter = ProgressReporter(self.notify.client, self.service, job.id, posted["channel"], posted["ts"],
                                    start=False)
        self.service.follow(job.id, reporter)
        reporter.start()

    def _settled(self, event: WatchEvent) -> None:
        job = self.service.job(event.job_id) if event.job_id else None
        if job and job.app_id:  # one service of an app rollback: the app's card shows each verdict
            app = self.service.job(job.app_id)
            if app and app.channel and app.message_ts:
                self.notify.update(app.channel, app.message_ts, f"App rollback {app.id}",
                                   kit.app_progress_blocks(app, self.service.parts(app.id), {}, time.time()))
            return
        if not job or not job.channel or not job.message_ts:
            return
        self.notify.update(job.channel, job.message_ts, f"Rollback job {job.id}",
                           kit.progress_blocks(job, self.service.steps(job.id), [], time.time()))

    def _error(self, event: WatchEvent) -> None:
        channel = self._channel(event)
        if channel:
            self.notify.post(channel, f"⚠️ Alarm watch: {esc_message(event.text)}")

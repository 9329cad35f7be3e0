"""Every message the bot posts or edits goes through here: one place that knows Slack may be down."""

from __future__ import annotations

import logging
import re

from slack_sdk import WebClient

from bot.core.stage_index import StageIndex
from bot.slack.blocks import superseded_blocks
from bot.slack.mrkdwn import esc

log = logging.getLogger("rollback-bot.slack")
PERMALINK_RE = re.compile(r"^https://[^\s|<>]{1,500}$")


class Notifier:
    def __init__(self, client: WebClient):
        self.client = client

    def post(self, channel: str, text: str, blocks: list | None = None, thread_ts: str | None = None,
             quiet: bool = True) -> dict | None:
        """Post a message; the answer, or None when Slack failed and ``quiet`` (it is logged)."""
        try:
            return self.client.chat_postMessage(channel=channel, text=text, blocks=blocks, thread_ts=thread_ts)
        except Exception as exc:
            if not quiet:
                raise
            log.warning("could not post to %s: %s", channel, exc)
            return None

    def update(self, channel: str, ts: str, text: str, blocks: list) -> bool:
        try:
            self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
            return True
        except Exception as exc:
            log.warning("could not update message %s in %s: %s", ts, channel, exc)
            return False

    def permalink(self, channel: str, ts: str) -> str:
        """A link to a message, for history; "" when Slack will not say (history then has no link)."""
        try:
            link = self.client.chat_getPermalink(channel=channel, message_ts=ts).get("permalink") or ""
        except Exception as exc:
            log.warning("could not get the link of message %s in %s: %s", ts, channel, exc)
            return ""
        return link if PERMALINK_RE.match(link) else ""

    def upload(self, channel: str, thread_ts: str, content: str, filename: str, title: str) -> None:
        # files_upload_v2 sends the content outside api_call, where the masking client cannot see it
        content = getattr(self.client, "mask", lambda text: text)(content)
        try:
            self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, content=content, filename=filename,
                                        title=title)
        except Exception as exc:
            log.warning("could not upload %s to %s: %s", filename, channel, exc)

    def home(self, user: str, blocks: list) -> None:
        try:
            self.client.views_publish(user_id=user, view={"type": "home", "blocks": blocks})
        except Exception as exc:
            log.warning("could not publish the home tab of %s: %s", user, exc)


def edit_superseded(notifier: Notifier, index: StageIndex, service: str = "",
                    channels: set[str] | None = None) -> bool:
    """Edit the notification of the build that was live before the live one: it no longer is. Only in
    ``channels`` (the stage's, ``Policy.notice_channels``): where index.json says it is, is the bucket's word."""
    if len(index.history) < 2 or index.history[1].ident == index.history[0].ident:
        return False
    was, live = index.history[1], index.history[0]
    where = was.notice_at
    if where is None or (channels is not None and where[0] not in channels):
        return False
    return notifier.update(*where, esc(f"{index.stage}: {was.commit[:7]} is no longer live"),
                           superseded_blocks(index.stage, was, live, service))

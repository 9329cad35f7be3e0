"""Deploy notifications sent by CI commands. A Slack failure warns and never fails the command."""

from __future__ import annotations

import sys
import time

from bot.core.config import Settings
from bot.core.keys import StageKey
from bot.engine import RollbackService
from bot.slack.app import make_client
from bot.slack.blocks import deployed_blocks
from bot.slack.mrkdwn import esc
from bot.slack.notifier import Notifier, edit_superseded
from bot.slack.people import People


def names(settings: Settings, service: RollbackService):
    """Names for Slack user ids (users.info, cached in the store); the ids when Slack is not configured."""
    return People(make_client(settings) if settings.slack_bot_token else None, service.store).name


def notify_deployed(settings: Settings, service: RollbackService, key: StageKey, by: str) -> None:
    """Post what went live on a stage to its channel, with a button to roll it back; the notification
    of the build it replaced is edited to say it is no longer live."""
    channel = settings.policy.notify_channel(key.stage, settings.channel, key.service)
    if not settings.slack_bot_token or not channel:
        return
    notice = service.deploy_notice(key)
    if notice is None:
        return
    named = key.service if service.several else ""
    notifier = Notifier(make_client(settings))
    try:  # CI must not fail because Slack did
        edit_superseded(notifier, notice.index, named,
                        settings.policy.notice_channels(key.stage, settings.channel, key.service))
        where = f"{named} in {key.stage}" if named else key.stage
        posted = notifier.post(channel, esc(f"{where} is now running {notice.live.label()}"),
                               deployed_blocks(key.stage, notice.live, notice.previous, notice.commits, by,
                                               time.time(), named), quiet=False)
        service.note_notice(key, notice, posted["channel"], posted["ts"])
    except Exception as exc:
        print(f"warning: could not post the deploy notification to Slack ({exc}); the deploy is recorded",
              file=sys.stderr)

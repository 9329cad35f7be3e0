"""Deploy notifications sent by CI commands. A Slack failure warns and never fails the command."""

from __future__ import annotations

import sys
import time

from bot.adapters.source import local_commits_between
from bot.core.config import Settings
from bot.core.stage_index import StageIndex
from bot.slack.app import make_client
from bot.slack.blocks import deployed_blocks
from bot.slack.mrkdwn import esc
from bot.slack.notifier import Notifier


def notify_deployed(settings: Settings, index: StageIndex, by: str) -> None:
    """Post what went live on ``index.stage`` to its channel, with a button to roll it back."""
    channel = settings.policy.notify_channel(index.stage, settings.channel)
    if not settings.slack_bot_token or not channel:
        return
    live = index.live_artifact()
    if live is None:
        return
    previous = next((index.find(*h.ident) for h in index.history[1:] if h.commit != live.commit), None)
    commits = local_commits_between(previous.commit, live.commit) if previous else []
    try:  # CI must not fail because Slack did
        Notifier(make_client(settings)).post(channel, esc(f"{index.stage} is now running {live.label()}"),
                                             deployed_blocks(index.stage, live, previous, commits, by, time.time()),
                                             quiet=False)
    except Exception as exc:
        print(f"warning: could not post the deploy notification to Slack ({exc}); the deploy is recorded",
              file=sys.stderr)

"""Deploy notifications sent by CI commands. A Slack failure warns and never fails the command."""

from __future__ import annotations

import sys
import time

from bot.adapters.artifacts import ArtifactStore
from bot.adapters.source import local_commits_between
from bot.core.config import Settings
from bot.slack.app import make_client
from bot.slack.blocks import deployed_blocks
from bot.slack.mrkdwn import esc
from bot.slack.notifier import Notifier, edit_superseded


def notify_deployed(settings: Settings, store: ArtifactStore, stage: str, by: str, service: str = "") -> None:
    """Post what went live on ``stage`` to its channel, with a button to roll it back; the notification
    of the build it replaced is edited to say it is no longer live."""
    channel = settings.policy.notify_channel(stage, settings.channel, store.service)
    if not settings.slack_bot_token or not channel:
        return
    index = store.read_index(stage)
    live = index.live_artifact()
    if live is None or index.live is None:
        return
    record = index.live
    previous = next((index.find(*h.ident) for h in index.history[1:] if h.commit != live.commit), None)
    commits = local_commits_between(previous.commit, live.commit) if previous else []
    notifier = Notifier(make_client(settings))
    try:  # CI must not fail because Slack did
        edit_superseded(notifier, index, service)
        where = f"{service} in {stage}" if service else stage
        posted = notifier.post(channel, esc(f"{where} is now running {live.label()}"),
                               deployed_blocks(stage, live, previous, commits, by, time.time(), service), quiet=False)
        store.note_notice(stage, record, posted["channel"], posted["ts"])
    except Exception as exc:
        print(f"warning: could not post the deploy notification to Slack ({exc}); the deploy is recorded",
              file=sys.stderr)

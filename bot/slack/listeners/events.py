"""Events: the App Home tab."""

from __future__ import annotations

import time

from slack_bolt import App

from bot.slack import blocks as kit
from bot.slack.app import Slack


def register(app: App, slack: Slack) -> None:
    def on_home(body, respond, groups_of):
        view = slack.service.overview()
        slack.notify.home(body["event"]["user"], kit.home_blocks(view.stages, view.jobs, time.time(),
                                                                 view.policy_configured, view.several,
                                                                 view.watches, view.parts, view.hidden,
                                                                 view.unsandboxed, view.unreadable))

    app.event("app_home_opened")(slack.after_ack(on_home))

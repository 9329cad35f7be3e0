"""The Bolt listeners, one module per kind, each with ``register(app, slack)`` (as Slack's
bolt-python-starter-template lays them out)."""

from slack_bolt import App

from bot.slack.listeners import actions, events, rollback_command


def register(app: App, slack) -> None:
    rollback_command.register(app, slack)
    actions.register(app, slack)
    events.register(app, slack)

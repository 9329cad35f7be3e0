"""`/rollback …`: parse the words, call the service, answer with blocks."""

from __future__ import annotations

import time

from slack_bolt import App

from bot.core.errors import UserError
from bot.slack import blocks as kit
from bot.slack.app import Slack, error_text
from bot.slack.commands import parse
from bot.slack.mrkdwn import code, esc, esc_message


def register(app: App, slack: Slack) -> None:
    service = slack.service

    def on_rollback(command, respond, groups_of):  # the body of a slash command is the command
        cmd = parse(command.get("text", ""))
        user_id, channel = command["user_id"], command["channel_id"]
        try:
            if cmd.action == "help":
                respond(blocks=kit.help_blocks(service.engine.artifacts.stages()), text="rollback-bot help")
            elif cmd.action == "invalid":
                respond(esc_message(cmd.error))  # it quotes the usage: `<stage>` is markup unless escaped
            elif cmd.action == "list":
                index = service.listing(service.key(cmd.stage), user_id, channel)
                respond(blocks=kit.listing_blocks(index, time.time()), text=f"Builds of {esc(cmd.stage)}")
            elif cmd.action == "plan":
                slack.post_plan(cmd.stage, cmd.ref, user_id, channel, respond, groups_of)
            elif cmd.action == "status":
                status = service.status()
                respond(blocks=kit.status_blocks(status.running, status.freezes, time.time()),
                        text="rollback-bot status")
            elif cmd.action == "history":
                respond(kit.history_text(cmd.stage, service.history(service.key(cmd.stage), user_id, channel)))
            elif cmd.action == "unfreeze":
                was = service.unfreeze(service.key(cmd.stage), user_id, channel, groups_of)
                respond(f"{code(cmd.stage)} unfrozen: CI may deploy again." if was
                        else f"{code(cmd.stage)} was not frozen.")
            elif cmd.action == "cancel":
                respond(service.cancel_running(service.key(cmd.stage), user_id, channel, groups_of))
        except UserError as exc:
            respond(error_text(exc))

    app.command("/rollback")(slack.after_ack(on_rollback))

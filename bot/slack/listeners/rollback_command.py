"""`/rollback …`: parse the words, call the service, answer with blocks."""

from __future__ import annotations

import time

from slack_bolt import App

from bot.core.actor import Actor
from bot.core.errors import UserError
from bot.slack import blocks as kit
from bot.slack.app import Slack, error_text
from bot.slack.mrkdwn import code, esc, esc_message
from bot.slack.slash import parse


def register(app: App, slack: Slack) -> None:
    service = slack.service

    def on_rollback(command, respond, groups_of):  # the body of a slash command is the command
        cmd = parse(command.get("text", ""), service.services if service.several else ())
        user_id, channel = command["user_id"], command["channel_id"]
        actor = Actor.in_slack(user_id, channel, groups_of)
        try:
            key = service.key(cmd.stage, cmd.service or None) if cmd.service or not service.several else None
            if cmd.action == "help":
                respond(blocks=kit.help_blocks(service.stage_names(), service.services if service.several else []),
                        text="rollback-bot help")
            elif cmd.action == "invalid":
                respond(esc_message(cmd.error))  # it quotes the usage: `<stage>` is markup unless escaped
            elif cmd.action == "list" and key is None:  # several services: a line for each
                rows = service.stage_overview(cmd.stage, actor)
                respond(blocks=kit.stage_overview_blocks(cmd.stage, rows), text=f"Services in {esc(cmd.stage)}")
            elif cmd.action == "list":
                index = service.listing(key, actor)
                respond(blocks=kit.listing_blocks(index, time.time(), account=service.account(key)),
                        text=f"Builds of {esc(cmd.stage)}")
            elif cmd.action == "plan" and key is None:  # several services, none named: the whole app
                slack.post_app_plan(cmd.stage, cmd.ref, actor, respond)
            elif cmd.action == "plan":
                slack.post_plan(key, cmd.ref, actor, respond)
            elif cmd.action == "status":
                status = service.status(channel)
                respond(blocks=kit.status_blocks(status.running, status.freezes, time.time(), service.several,
                                                 status.hidden, service.parts, status.unreadable),
                        text="rollback-bot status")
            elif cmd.action == "history":
                runs = service.history_of(cmd.stage, key, actor)
                respond(kit.history_text(cmd.stage, runs, {j.id: service.parts(j.id) for j in runs if j.is_app}))
            elif cmd.action == "cancel" and key is None:  # several services: the app's, or the only one running
                respond(service.cancel_in_stage(cmd.stage, actor))
            elif key is None:  # unfreeze: one service's stage
                respond(kit.choose_service_text(cmd.stage, "", service.services, cmd.action))
            elif cmd.action == "unfreeze":
                was = service.unfreeze(key, actor)
                what = code(f"{key.service} {key.stage}" if service.several else key.stage)
                if not was:
                    respond(f"{what} was not frozen.")
                    return
                slack.announce_unfreeze(key, user_id, channel, was)
                respond(f"{what} unfrozen: CI may deploy again. The channel was told.")
            elif cmd.action == "cancel":
                respond(service.cancel_running(key, actor))
        except UserError as exc:
            respond(error_text(exc))

    app.command("/rollback")(slack.after_ack(on_rollback))

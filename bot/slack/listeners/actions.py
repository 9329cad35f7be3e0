"""Button clicks: plan a build, approve, cancel a plan, cancel a running job."""

from __future__ import annotations

import time

from slack_bolt import App

from bot.core.errors import UserError
from bot.core.jobs import Job
from bot.engine.service import Outdated, Refused
from bot.slack import blocks as kit
from bot.slack import ids
from bot.slack.app import Slack, _checked, error_text, read_log
from bot.slack.app_progress import AppReporter
from bot.slack.mrkdwn import esc, user
from bot.slack.progress import ProgressReporter


def register(app: App, slack: Slack) -> None:
    service, store = slack.service, slack.store

    def ephemeral(respond, text: str) -> None:
        respond(text=text, response_type="ephemeral", replace_original=False)

    def on_plan_build(body, respond, groups_of):
        try:
            request = ids.PlanRequest.parse(body["actions"][0].get("value", ""))
            key = service.key(request.stage, request.service or None)
            if request.live:  # drawn on a deploy notification: is that build still live?
                live = service.index(key).live
                was_commit, _, was_build = request.live.partition(":")
                if live is None or (live.commit, live.build_id) != (was_commit, was_build):
                    ephemeral(respond, kit.no_longer_live(was_commit, was_build, live))
            slack.post_plan(key, request.ref, body["user"]["id"], body["channel"]["id"], respond, groups_of)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
        except UserError as exc:
            ephemeral(respond, error_text(exc))

    def on_approve(body, respond, groups_of):
        try:
            job_id = ids.parse_job(body["actions"][0].get("value", ""))
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
            return
        user_id, channel, ts = body["user"]["id"], body["channel"]["id"], body["message"]["ts"]
        if service.is_app(job_id):
            approve_app(job_id, user_id, channel, ts, respond, groups_of)
            return
        # Listen before starting, so not one event of the job is missed; the subscription ends with the job.
        reporter = ProgressReporter(slack.client, store, job_id, channel, ts, on_final=slack.announce, start=False,
                                    full_log=lambda: read_log(service.runner_of(job_id).log_path(job_id)))
        unsubscribe = service.runner_of(job_id).subscribe(job_id, reporter)
        try:
            service.approve(job_id, user_id, channel, groups_of, unfreeze=_checked(body, ids.LIFT_FREEZE))
        except Outdated as exc:
            unsubscribe()
            ephemeral(respond, error_text(exc))
            slack.notify.update(channel, ts, "Plan out of date: nothing was deployed", kit.outdated_plan_blocks(
                exc.job.stage, exc.job.target_commit, exc.changes, exc.plan.ref, exc.job.shown_service))
            return
        except UserError as exc:
            unsubscribe()
            ephemeral(respond, error_text(exc))
            if isinstance(exc, Refused) and exc.kind == "expired":
                slack.close_card(channel, ts, Job.from_row(store.job(job_id)), "This plan expired.")
            return
        reporter.start()

    def approve_app(job_id, user_id, channel, ts, respond, groups_of):
        reporter = AppReporter(slack.notify, store, job_id, channel, ts, on_final=slack.announce)
        service.apps.listeners.append(reporter)
        try:
            service.apps.approve(job_id, user_id, channel, groups_of)
        except Outdated as exc:
            service.apps.listeners.remove(reporter)
            ephemeral(respond, error_text(exc))
            slack.close_card(channel, ts, exc.job, "Out of date: nothing was deployed. " + esc("; ".join(exc.changes)))
            return
        except UserError as exc:
            service.apps.listeners.remove(reporter)
            ephemeral(respond, error_text(exc))
            if isinstance(exc, Refused) and exc.kind == "expired":
                slack.close_card(channel, ts, Job.from_row(store.job(job_id)), "This plan expired.")
            return
        reporter.start()

    def on_undo_app(body, respond, groups_of):
        try:
            app_id = ids.parse_job(body["actions"][0].get("value", ""))
            job = store.job(app_id)
            slack.post_app_plan(job["stage"] if job else "", "", body["user"]["id"], body["channel"]["id"], respond,
                                groups_of, undo=app_id)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
        except UserError as exc:
            ephemeral(respond, error_text(exc))

    def on_cancel_plan(body, respond, groups_of):
        user_id, channel = body["user"]["id"], body["channel"]["id"]
        try:
            job = service.withdraw(ids.parse_job(body["actions"][0].get("value", "")), user_id, channel, groups_of)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
            return
        except UserError as exc:
            ephemeral(respond, error_text(exc))
            return
        slack.close_card(channel, body["message"]["ts"], job, f"Cancelled by {user(user_id)}; nothing was deployed.")

    def on_cancel_job(body, respond, groups_of):
        try:
            # The job this button was drawn for, never whatever runs on the stage now.
            said = service.cancel_job(ids.parse_job(body["actions"][0].get("value", "")), body["user"]["id"],
                                      body["channel"]["id"], groups_of)
        except ids.NotOurs:
            said = "That button is not one of mine."
        except UserError as exc:
            said = error_text(exc)
        ephemeral(respond, said)

    def on_list_builds(body, respond, groups_of):
        try:
            request = ids.PlanRequest.parse(body["actions"][0].get("value", ""))
            key = service.key(request.stage, request.service or None)
            index = service.listing(key, body["user"]["id"], body["channel"]["id"])
            respond(blocks=kit.listing_blocks(index, time.time(), account=service.account(key)),
                    text=f"Builds of {esc(key.service)} in {esc(key.stage)}", response_type="ephemeral",
                    replace_original=False)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
        except UserError as exc:
            ephemeral(respond, error_text(exc))

    app.action(ids.PLAN_BUILD)(slack.after_ack(on_plan_build))
    app.action(ids.LIST_BUILDS)(slack.after_ack(on_list_builds))
    app.action(ids.UNDO_APP)(slack.after_ack(on_undo_app))
    app.action(ids.APPROVE)(slack.after_ack(on_approve))
    app.action(ids.CANCEL_PLAN)(slack.after_ack(on_cancel_plan))
    app.action(ids.CANCEL_JOB)(slack.after_ack(on_cancel_job))
    app.action(ids.LIFT_FREEZE)(lambda ack: ack())  # its state is read when Approve is clicked

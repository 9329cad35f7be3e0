"""Button clicks: plan a build, approve, cancel a plan, cancel a running job."""

from __future__ import annotations

import time

from slack_bolt import App

from bot.core.actor import Actor
from bot.core.errors import UserError
from bot.core.jobs import APP
from bot.engine import Outdated, RefusalKind, Refused
from bot.slack import blocks as kit
from bot.slack import ids
from bot.slack.app import Slack, _checked, error_text, read_log
from bot.slack.mrkdwn import esc, user
from bot.slack.progress import AppReporter, ProgressReporter


def register(app: App, slack: Slack) -> None:
    service = slack.service

    def ephemeral(respond, text: str) -> None:
        respond(text=text, response_type="ephemeral", replace_original=False)

    def clicked(body, groups_of) -> Actor:
        return Actor.in_slack(body["user"]["id"], body["channel"]["id"], groups_of)

    def on_plan_build(body, respond, groups_of):
        try:
            request = ids.PlanRequest.parse(body["actions"][0].get("value", ""))
            if request.service == APP:  # "Plan again" on an app card that went out of date
                undo = int(request.ref[5:]) if request.ref.startswith("undo:") and request.ref[5:].isdigit() else None
                slack.post_app_plan(request.stage, request.ref, clicked(body, groups_of), respond, undo=undo)
                return
            key = service.key(request.stage, request.service or None)
            if request.live:  # drawn on a deploy notification: is that build still live?
                live = service.index(key).live
                was_commit, _, was_build = request.live.partition(":")
                if live is None or (live.commit, live.build_id) != (was_commit, was_build):
                    ephemeral(respond, kit.no_longer_live(was_commit, was_build, live))
            slack.post_plan(key, request.ref, clicked(body, groups_of), respond)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
        except UserError as exc:
            ephemeral(respond, error_text(exc))

    def on_approve(body, respond, groups_of):
        """One approval path for a service's card and the app's: only how progress is shown differs."""
        try:
            job_id = service.resolve(*ids.parse_job_ref(body["actions"][0].get("value", "")))
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
            return
        except UserError as exc:
            ephemeral(respond, error_text(exc))
            return
        channel, ts = body["channel"]["id"], body["message"]["ts"]
        job = service.job(job_id)
        # Listen before starting, so not one event of the job is missed; the subscription ends with the job.
        if job is not None and job.is_app:
            reporter = AppReporter(slack.notify, service, job_id, channel, ts, on_final=slack.announce)
            service.apps.listeners.append(reporter)
            unsubscribe = lambda: service.apps.listeners.remove(reporter)  # noqa: E731
        else:
            reporter = ProgressReporter(slack.client, service, job_id, channel, ts, on_final=slack.announce,
                                        start=False, full_log=lambda: read_log(service.log_path(job_id)))
            unsubscribe = service.follow(job_id, reporter)
        try:
            service.approve(job_id, clicked(body, groups_of), unfreeze=_checked(body, ids.LIFT_FREEZE),
                            card=(channel, ts))
        except Outdated as exc:
            unsubscribe()
            ephemeral(respond, error_text(exc))
            slack.notify.update(channel, ts, "Plan out of date: nothing was deployed", kit.outdated_plan_blocks(
                exc.job.stage, exc.job.target_commit, exc.changes, exc.ref, exc.service or exc.job.shown_service))
            return
        except UserError as exc:
            unsubscribe()
            ephemeral(respond, error_text(exc))
            if isinstance(exc, Refused) and exc.kind is RefusalKind.EXPIRED:
                slack.close_card(channel, ts, service.job(job_id), "This plan expired.")
            return
        reporter.start()

    def on_undo_app(body, respond, groups_of):
        try:
            app_id = service.ran_here(*ids.parse_job_ref(body["actions"][0].get("value", "")))
            job = service.job(app_id)
            slack.post_app_plan(job.stage if job else "", "", clicked(body, groups_of), respond, undo=app_id)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
        except UserError as exc:
            ephemeral(respond, error_text(exc))

    def on_cancel_plan(body, respond, groups_of):
        actor = clicked(body, groups_of)
        try:
            job = service.withdraw(service.resolve(*ids.parse_job_ref(body["actions"][0].get("value", ""))), actor)
        except ids.NotOurs:
            ephemeral(respond, "That button is not one of mine.")
            return
        except UserError as exc:
            ephemeral(respond, error_text(exc))
            return
        slack.close_card(actor.channel, body["message"]["ts"], job,
                         f"Cancelled by {user(actor.user)}; nothing was deployed.")

    def on_cancel_job(body, respond, groups_of):
        try:
            # The job this button was drawn for, never whatever runs on the stage now.
            job_id, ref = ids.parse_job_ref(body["actions"][0].get("value", ""))
            said = service.cancel_job(job_id, clicked(body, groups_of), ref)
        except ids.NotOurs:
            said = "That button is not one of mine."
        except UserError as exc:
            said = error_text(exc)
        ephemeral(respond, said)

    def on_list_builds(body, respond, groups_of):
        try:
            request = ids.PlanRequest.parse(body["actions"][0].get("value", ""))
            key = service.key(request.stage, request.service or None)
            index = service.listing(key, clicked(body, groups_of))
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

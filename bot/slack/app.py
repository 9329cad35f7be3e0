"""Build the Bolt app and register its listeners. Handlers parse, call a service, render blocks."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.approvals import Approvals, Refused
from bot.artifacts import ArtifactError
from bot.config import Settings
from bot.engine import Engine
from bot.plan import load_stage
from bot.slack import blocks as kit
from bot.slack.commands import parse
from bot.slack.progress import ProgressReporter
from bot.source import SourceError
from bot.stage_index import RefError

GROUP_TTL = 60.0
log = logging.getLogger("rollback-bot.slack")


def make_client(settings: Settings) -> WebClient:
    client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))  # honours Retry-After
    return client


class GroupDirectory:
    """Which user groups (named in the policy) a user belongs to, cached for a minute."""

    def __init__(self, client: WebClient, group_ids: set[str]):
        self.client = client
        self.group_ids = group_ids
        self._cache: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, user: str) -> set[str]:
        found = set()
        for gid in self.group_ids:
            with self._lock:
                cached = self._cache.get(gid)
            if cached is None or time.monotonic() - cached[0] > GROUP_TTL:
                try:
                    users = set(self.client.usergroups_users_list(usergroup=gid)["users"])
                except SlackApiError:
                    users = cached[1] if cached else set()
                cached = (time.monotonic(), users)
                with self._lock:
                    self._cache[gid] = cached
            if user in cached[1]:
                found.add(gid)
        return found


def _error_text(exc: Exception) -> str:
    if isinstance(exc, RefError) and exc.candidates:
        return str(exc) + "\n" + "\n".join(
            f"• `{a.commit[:12]}` build `{a.build_id}` {a.author}: {a.message}" for a in exc.candidates)
    return str(exc)


USER_ERRORS = (Refused, RefError, ArtifactError, SourceError)


def build_app(settings: Settings, engine: Engine, approvals: Approvals, client: WebClient | None = None) -> App:
    client = client or make_client(settings)
    # Acknowledge in the request thread and do the work afterwards on our own pool: an ack never waits
    # behind other people's slow work. (Bolt's lazy listeners do the same but deep-copy every request,
    # which is half of its per-request cost.)
    app = App(signing_secret=settings.slack_signing_secret or None, client=client, process_before_response=True)
    work = ThreadPoolExecutor(max_workers=4, thread_name_prefix="slack-work")
    group_ids = {i for r in approvals.policy.rules.values()
                 for i in (r.requesters or ()) + (r.approvers or ()) if i.startswith("S")}
    groups_of = GroupDirectory(client, group_ids)
    store = engine.store

    def announce(job: dict) -> None:
        """Rollback results go to the stage's notification channel too, when that is elsewhere."""
        channel = approvals.policy.notify_channel(job["stage"], settings.channel)
        if channel and channel != job.get("channel"):
            verdict = {"succeeded": "✅ rolled back", "failed": "❌ rollback failed"}.get(job["state"], job["state"])
            try:
                client.chat_postMessage(channel=channel, text=f"{verdict}: `{job['stage']}` → "
                                        f"`{job['target_commit'][:7]}` (job {job['id']}) {job.get('reason') or ''}")
            except Exception as exc:  # Slack unreachable or refusing: the card already shows the result
                log.warning("could not announce job %s in %s: %s", job["id"], channel, exc)

    def post_plan(stage: str, ref: str, user: str, channel: str, respond) -> None:
        pending = approvals.request(stage, ref, user, channel, groups_of)
        now = time.time()
        try:
            posted = client.chat_postMessage(
                channel=channel, text=f"Roll back {stage} to {pending.plan.target.short}?",
                blocks=kit.plan_blocks(pending.plan, pending.job_id, user, pending.expires_at, now))
        except SlackApiError as exc:
            approvals.withdraw(pending.job_id, user)
            respond(f"I could not post the plan here ({exc.response.get('error')}). "
                    "Invite me to the channel with `/invite @rollback-bot` and try again.")
            return
        except Exception as exc:  # Slack unreachable: nothing was posted, so nothing may stay pending
            approvals.withdraw(pending.job_id, user)
            log.warning("could not post a plan card: %s", exc)
            return
        approvals.attach_message(pending.job_id, posted["channel"], posted["ts"])

    def on_rollback(command, respond):  # the body of a slash command is the command
        cmd = parse(command.get("text", ""))
        user, channel = command["user_id"], command["channel_id"]
        try:
            if cmd.action == "help":
                respond(blocks=kit.help_blocks(engine.artifacts.stages()), text="rollback-bot help")
            elif cmd.action == "invalid":
                respond(cmd.error)
            elif cmd.action == "list":
                index = load_stage(engine.artifacts, cmd.stage)
                respond(blocks=kit.listing_blocks(index, time.time()), text=f"Builds of {cmd.stage}")
            elif cmd.action == "plan":
                post_plan(cmd.stage, cmd.ref, user, channel, respond)
            elif cmd.action == "status":
                running = store.jobs(states=["running"])
                freezes = {}
                for stage in engine.artifacts.stages():
                    f = engine.artifacts.read_index(stage).freeze
                    if f:
                        freezes[stage] = f"{f.reason} (<@{f.by}>)"
                respond(blocks=kit.status_blocks(running, freezes, time.time()), text="rollback-bot status")
            elif cmd.action == "history":
                jobs = [j for j in store.jobs(stage=cmd.stage) if j["state"] not in ("pending", "withdrawn")]
                lines = [f"• job {j['id']} *{j['state']}* → `{j['target_commit'][:7]}` by "
                         f"<@{j['approved_by'] or j['requested_by']}> {j['reason'] or ''}" for j in jobs]
                respond("\n".join(lines) or f"No rollbacks of `{cmd.stage}` yet.")
            elif cmd.action == "unfreeze":
                was = approvals.unfreeze(cmd.stage, user, groups_of)
                respond(f"`{cmd.stage}` unfrozen: CI may deploy again." if was else f"`{cmd.stage}` was not frozen.")
            elif cmd.action == "cancel":
                job = approvals.cancel_running(cmd.stage, user, groups_of)
                respond(f"Cancelling job {job['id']}: its processes are being stopped.")
        except USER_ERRORS as exc:
            respond(_error_text(exc))

    def on_plan_build(body, respond):
        action = body["actions"][0]
        value = json.loads(action["value"])
        try:
            post_plan(value["stage"], value["ref"], body["user"]["id"], body["channel"]["id"], respond)
        except USER_ERRORS as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)

    def on_approve(body, respond):
        action = body["actions"][0]
        job_id, user = int(action["value"]), body["user"]["id"]
        channel, ts = body["channel"]["id"], body["message"]["ts"]
        # Listen before starting, so not one event of the job is missed.
        reporter = ProgressReporter(client, store, job_id, channel, ts, on_final=announce, start=False)
        engine.jobs.listeners.append(reporter)
        try:
            approvals.approve(job_id, user, groups_of)
        except USER_ERRORS as exc:
            engine.jobs.listeners.remove(reporter)
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            if isinstance(exc, Refused) and exc.kind == "expired":
                job = store.job(job_id)
                client.chat_update(channel=channel, ts=ts, text="Plan expired",
                                   blocks=kit.closed_plan_blocks(f"Roll back {job['stage']} to "
                                                                 f"{job['target_commit'][:7]}", "This plan expired."))
            return
        reporter.start()

    def on_cancel_plan(body, respond):
        action = body["actions"][0]
        user = body["user"]["id"]
        try:
            job = approvals.withdraw(int(action["value"]), user, groups_of)
        except USER_ERRORS as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            return
        client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text="Plan cancelled",
                           blocks=kit.closed_plan_blocks(f"Roll back {job['stage']} to {job['target_commit'][:7]}",
                                                         f"Cancelled by <@{user}>; nothing was deployed."))

    def on_cancel_job(body, respond):
        action = body["actions"][0]
        job = store.job(int(action["value"]))
        try:
            approvals.cancel_running(job["stage"], body["user"]["id"], groups_of)
        except USER_ERRORS as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            return
        respond(text=f"Cancelling job {job['id']}: its processes are being stopped.", response_type="ephemeral",
                replace_original=False)

    def on_home(body, respond):
        event = body["event"]
        stages = [(engine.artifacts.read_index(s), store.lock_of(s)) for s in engine.artifacts.stages()]
        jobs = [j for j in store.jobs(limit=30) if j["state"] not in ("pending", "withdrawn")][:10]
        client.views_publish(user_id=event["user"],
                             view={"type": "home", "blocks": kit.home_blocks(stages, jobs, time.time())})

    def after_ack(handler):
        def listener(ack, body, respond):
            ack()
            work.submit(_run, handler, body, respond)

        return listener

    app.command("/rollback")(after_ack(on_rollback))
    app.action("plan_build")(after_ack(on_plan_build))
    app.action("approve")(after_ack(on_approve))
    app.action("cancel_plan")(after_ack(on_cancel_plan))
    app.action("cancel_job")(after_ack(on_cancel_job))
    app.event("app_home_opened")(after_ack(on_home))
    return app


def _run(handler, body, respond) -> None:
    try:
        handler(body, respond)
    except Exception:  # the person already got their ack; the failure must at least be logged
        log.exception("handling a Slack request failed")

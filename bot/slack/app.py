"""Build the Bolt app and register its listeners. Handlers parse, call a service, render blocks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.adapters.artifacts import ArtifactError
from bot.adapters.source import SourceError
from bot.core.config import Settings
from bot.core.masking import Masker
from bot.core.stage_index import RefError
from bot.engine.build import Engine
from bot.engine.pipeline import Event
from bot.engine.service import Outdated, Refused, RollbackService
from bot.slack import blocks as kit
from bot.slack.commands import parse
from bot.slack.mrkdwn import code, esc, esc_message, user
from bot.slack.progress import ProgressReporter

GROUP_TTL = 60.0
WORK_QUEUE = 64  # requests waiting for a worker; past that, people are told to try again
SWEEP_SECONDS = 30.0
BUSY = "rollback-bot is busy with many requests right now; try again in a moment."
log = logging.getLogger("rollback-bot.slack")


def _masked(value, mask):
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    return value


class MaskingWebClient(WebClient):
    """Every Web API call passes its arguments through the masker: the last way out for a secret,
    whatever builder or message it slipped into."""

    def __init__(self, *args, mask=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask = mask or Masker()

    def api_call(self, api_method, *, http_verb="POST", files=None, data=None, params=None, json=None,
                 headers=None, auth=None):
        return super().api_call(api_method, http_verb=http_verb, files=files, data=_masked(data, self.mask),
                                params=_masked(params, self.mask), json=_masked(json, self.mask),
                                headers=headers, auth=auth)


def make_client(settings: Settings) -> WebClient:
    client = MaskingWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url,
                              mask=Masker(settings.secrets()), timeout=15)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))  # honours Retry-After
    return client


class GroupDirectory:
    """Which user groups (named in the policy) a user belongs to, cached for a minute. When Slack
    cannot say (an error, an outage), the answer is "none": a removed approver stays removed."""

    def __init__(self, client: WebClient, group_ids: Callable[[], set[str]],
                 clock: Callable[[], float] = time.monotonic, ttl: float = GROUP_TTL):
        self.client = client
        self.group_ids = group_ids
        self.clock = clock
        self.ttl = ttl
        self._cache: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, user: str) -> set[str]:
        found = set()
        for gid in self.group_ids():
            with self._lock:
                cached = self._cache.get(gid)
            if cached is None or self.clock() - cached[0] > self.ttl:
                try:
                    users = set(self.client.usergroups_users_list(usergroup=gid)["users"])
                except Exception as exc:  # fail closed: no membership we cannot confirm now
                    log.warning("cannot read user group %s (%s): treating its members as not in it", gid, exc)
                    with self._lock:
                        self._cache.pop(gid, None)
                    continue
                cached = (self.clock(), users)
                with self._lock:
                    self._cache[gid] = cached
            if user in cached[1]:
                found.add(gid)
        return found


class BoundedWork:
    """A worker pool whose queue has a bound: a flood is told to wait instead of growing memory."""

    def __init__(self, workers: int, bound: int, name: str):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.slots = threading.BoundedSemaphore(workers + bound)

    def submit(self, fn, *args) -> bool:
        if not self.slots.acquire(blocking=False):
            return False

        def run():
            try:
                fn(*args)
            finally:
                self.slots.release()

        self.pool.submit(run)
        return True


def _error_text(exc: Exception) -> str:
    if isinstance(exc, RefError) and exc.candidates:
        return esc_message(str(exc)) + "\n" + "\n".join(
            f"• {code(a.commit[:12])} build {code(a.build_id)} {esc(a.author)}: {esc(a.message)}"
            for a in exc.candidates)
    if isinstance(exc, Refused):
        return str(exc)  # the service's own words: stage names and policy IDs, validated
    return esc_message(str(exc))


USER_ERRORS = (Refused, RefError, ArtifactError, SourceError)


def build_app(settings: Settings, engine: Engine, approvals: RollbackService, client: WebClient | None = None) -> App:
    client = client or make_client(settings)
    mask = Masker(settings.secrets())
    # Acknowledge in the request thread and do the work afterwards on our own pool: an ack never waits
    # behind other people's slow work. (Bolt's lazy listeners do the same but deep-copy every request,
    # which is half of its per-request cost.)
    app = App(signing_secret=settings.slack_signing_secret or None, client=client, process_before_response=True)
    work = BoundedWork(4, WORK_QUEUE, "slack-work")
    groups_of = GroupDirectory(client, lambda: approvals.policy.group_ids())
    store = engine.store

    def announce(job: dict) -> None:
        """Rollback results go to the stage's notification channel too, when that is elsewhere."""
        channel = approvals.policy.notify_channel(job["stage"], settings.channel)
        if channel and channel != job.get("channel"):
            verdict = {"succeeded": "✅ rolled back", "failed": "❌ rollback failed"}.get(job["state"], job["state"])
            if job["state"] == "succeeded" and job.get("recorded") == 0:
                verdict = "🟥 deployed but CI NOT frozen"
            try:
                client.chat_postMessage(channel=channel, text=f"{verdict}: {code(job['stage'])} → "
                                        f"{code(job['target_commit'][:7])} (job {job['id']}) "
                                        f"{esc_message(job.get('reason') or '')}")
            except Exception as exc:  # Slack unreachable or refusing: the card already shows the result
                log.warning("could not announce job %s in %s: %s", job["id"], channel, exc)

    def on_job_event(job_id: int, event: Event) -> None:
        """A result that reached index.json late (after retries) is announced where the card is."""
        if event.step != "index" or event.status != "recorded":
            return
        job = store.job(job_id)
        if not job or not job.get("channel"):
            return
        try:
            if job.get("message_ts"):
                client.chat_update(channel=job["channel"], ts=job["message_ts"], text=f"Rollback job {job_id}",
                                   blocks=kit.progress_blocks(job, _steps(store, job_id), [], time.time()))
            client.chat_postMessage(channel=job["channel"], thread_ts=job.get("message_ts"),
                                    text=f"✅ Job {job_id}: {esc(event.text)}")
        except Exception as exc:
            log.warning("could not announce that job %s was recorded: %s", job_id, exc)

    engine.jobs.listeners.append(on_job_event)

    def post_plan(stage: str, ref: str, user_id: str, channel: str, respond) -> None:
        pending = approvals.request(stage, ref, user_id, channel, groups_of)
        now = time.time()
        try:
            posted = client.chat_postMessage(
                channel=channel, text=esc(kit.plan_title(pending.plan)),
                blocks=kit.plan_blocks(pending.plan, pending.job_id, user_id, pending.expires_at, now,
                                       pending.needs, pending.policy_configured))
        except SlackApiError as exc:
            approvals.withdraw(pending.job_id, user_id, channel)
            respond(f"I could not post the plan here ({esc(exc.response.get('error'))}). "
                    "Invite me to the channel with `/invite @rollback-bot` and try again.")
            return
        except Exception as exc:  # Slack unreachable: nothing was posted, so nothing may stay pending
            approvals.withdraw(pending.job_id, user_id, channel)
            log.warning("could not post a plan card: %s", exc)
            return
        approvals.attach_message(pending.job_id, posted["channel"], posted["ts"])

    def on_rollback(command, respond):  # the body of a slash command is the command
        cmd = parse(command.get("text", ""))
        user_id, channel = command["user_id"], command["channel_id"]
        try:
            if cmd.action == "help":
                respond(blocks=kit.help_blocks(engine.artifacts.stages()), text="rollback-bot help")
            elif cmd.action == "invalid":
                respond(cmd.error)
            elif cmd.action == "list":
                index = approvals.listing(cmd.stage, user_id, channel)
                respond(blocks=kit.listing_blocks(index, time.time()), text=f"Builds of {esc(cmd.stage)}")
            elif cmd.action == "plan":
                post_plan(cmd.stage, cmd.ref, user_id, channel, respond)
            elif cmd.action == "status":
                status = approvals.status()
                respond(blocks=kit.status_blocks(status.running, status.freezes, time.time()),
                        text="rollback-bot status")
            elif cmd.action == "history":
                respond(kit.history_text(cmd.stage, approvals.history(cmd.stage, user_id, channel)))
            elif cmd.action == "unfreeze":
                was = approvals.unfreeze(cmd.stage, user_id, channel, groups_of)
                respond(f"{code(cmd.stage)} unfrozen: CI may deploy again." if was
                        else f"{code(cmd.stage)} was not frozen.")
            elif cmd.action == "cancel":
                respond(approvals.cancel_running(cmd.stage, user_id, channel, groups_of))
        except USER_ERRORS as exc:
            respond(_error_text(exc))

    def on_plan_build(body, respond):
        action = body["actions"][0]
        try:
            value = json.loads(action["value"])
            stage, ref = str(value["stage"]), str(value["ref"])
        except (ValueError, KeyError, TypeError):
            respond(text="That button is not one of mine.", response_type="ephemeral", replace_original=False)
            return
        try:
            post_plan(stage, ref, body["user"]["id"], body["channel"]["id"], respond)
        except USER_ERRORS as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)

    def on_approve(body, respond):
        action = body["actions"][0]
        try:
            job_id, user_id = _job_id(action), body["user"]["id"]
        except Refused as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            return
        channel, ts = body["channel"]["id"], body["message"]["ts"]
        lift = _checked(body, kit.LIFT_FREEZE)
        # Listen before starting, so not one event of the job is missed; the subscription ends with the job.
        reporter = ProgressReporter(client, store, job_id, channel, ts, on_final=announce, start=False,
                                    full_log=lambda: _read_log(engine.jobs.log_path(job_id)))
        unsubscribe = engine.jobs.subscribe(job_id, reporter)
        try:
            approvals.approve(job_id, user_id, channel, groups_of, unfreeze=lift)
        except Outdated as exc:
            unsubscribe()
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            client.chat_update(channel=channel, ts=ts, text="Plan out of date: nothing was deployed",
                               blocks=kit.outdated_plan_blocks(exc.job["stage"], exc.job["target_commit"],
                                                               exc.changes, exc.plan.ref))
            return
        except USER_ERRORS as exc:
            unsubscribe()
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            if isinstance(exc, Refused) and exc.kind == "expired":
                job = store.job(job_id)
                client.chat_update(channel=channel, ts=ts, text="Plan expired",
                                   blocks=kit.closed_plan_blocks(job["stage"], job["target_commit"],
                                                                 "This plan expired."))
            return
        reporter.start()

    def on_cancel_plan(body, respond):
        action = body["actions"][0]
        user_id, channel = body["user"]["id"], body["channel"]["id"]
        try:
            job = approvals.withdraw(_job_id(action), user_id, channel, groups_of)
        except USER_ERRORS as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            return
        client.chat_update(channel=channel, ts=body["message"]["ts"], text="Plan cancelled",
                           blocks=kit.closed_plan_blocks(job["stage"], job["target_commit"],
                                                         f"Cancelled by {user(user_id)}; nothing was deployed."))

    def on_cancel_job(body, respond):
        action = body["actions"][0]
        try:
            # The job this button was drawn for, never whatever runs on the stage now.
            said = approvals.cancel_job(_job_id(action), body["user"]["id"], body["channel"]["id"], groups_of)
        except USER_ERRORS as exc:
            respond(text=_error_text(exc), response_type="ephemeral", replace_original=False)
            return
        respond(text=said, response_type="ephemeral", replace_original=False)

    def on_home(body, respond):
        view = approvals.overview()
        client.views_publish(user_id=body["event"]["user"], view={"type": "home", "blocks": kit.home_blocks(
            view.stages, view.jobs, time.time(), view.policy_configured)})

    def after_ack(handler):
        def listener(ack, body, respond):
            ack()
            masked = _masking_respond(respond, mask)
            if not work.submit(_run, handler, body, masked):
                masked(text=BUSY, response_type="ephemeral", replace_original=False)

        return listener

    app.command("/rollback")(after_ack(on_rollback))
    app.action("plan_build")(after_ack(on_plan_build))
    app.action("approve")(after_ack(on_approve))
    app.action("cancel_plan")(after_ack(on_cancel_plan))
    app.action("cancel_job")(after_ack(on_cancel_job))
    app.action(kit.LIFT_FREEZE)(lambda ack: ack())  # its state is read when Approve is clicked
    app.event("app_home_opened")(after_ack(on_home))
    return app


def sweep_expired(approvals: RollbackService, client: WebClient) -> int:
    """Close the cards of plans whose buttons expired. Returns how many."""
    swept = approvals.sweep_expired()
    for job in swept:
        if job.get("channel") and job.get("message_ts"):
            try:
                client.chat_update(channel=job["channel"], ts=job["message_ts"], text="Plan expired",
                                   blocks=kit.closed_plan_blocks(job["stage"], job["target_commit"],
                                                                 "This plan expired; nothing was deployed."))
            except Exception as exc:
                log.warning("could not close expired plan %s: %s", job["id"], exc)
    return len(swept)


def _read_log(path, limit: int = 50 * 1024**2) -> str:
    """The job's log file (already masked when written), at most ``limit`` bytes from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _job_id(action: dict) -> int:
    try:
        return int(action.get("value", ""))
    except (TypeError, ValueError):
        raise Refused("That button is not one of mine.", "gone") from None


def _checked(body: dict, action_id: str) -> bool:
    for block in (body.get("state") or {}).get("values", {}).values():
        chosen = (block.get(action_id) or {}).get("selected_options") or []
        if any(o.get("value") == "unfreeze" for o in chosen):
            return True
    return False


def _steps(store, job_id: int) -> dict:
    steps = {}
    for e in store.events(job_id):
        if e["step"] in kit.STEP_LABELS:
            steps[e["step"]] = (e["status"], e["duration"])
    return steps


def _masking_respond(respond, mask):
    def masked(text: str = "", **kwargs):
        return respond(text=mask(text) if text else text,
                       **{k: _masked(v, mask) if k == "blocks" else v for k, v in kwargs.items()})

    return masked


def _run(handler, body, respond) -> None:
    try:
        handler(body, respond)
    except Exception:  # the person already got their ack; the failure must at least be logged
        log.exception("handling a Slack request failed")

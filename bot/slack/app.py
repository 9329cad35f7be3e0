"""Build the Bolt app and register its listeners. Handlers parse, call a service, render blocks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.core.actor import Actor
from bot.core.config import Settings
from bot.core.jobs import Job, JobState, Recorded
from bot.core.keys import StageKey
from bot.core.masking import Masker
from bot.core.stage_index import RefError
from bot.engine import Event, EventStatus, Refused, RollbackService
from bot.slack import blocks as kit
from bot.slack.mrkdwn import code, esc, esc_message, user
from bot.slack.notifier import Notifier, edit_superseded

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


def error_text(exc: Exception) -> str:
    if isinstance(exc, RefError) and exc.candidates:
        return esc_message(str(exc)) + "\n" + "\n".join(
            f"• {code(a.commit[:12])} build {code(a.build_id)} {esc(a.author)}: {esc(a.message)}"
            for a in exc.candidates)
    if isinstance(exc, Refused):
        return str(exc)  # the service's own words: stage names and policy IDs, validated
    return esc_message(str(exc))


class Slack:
    """What every listener needs: settings, the rollback service, the client and notifier, the group
    directory and the work pool. Listeners parse, call the service, and render blocks."""

    def __init__(self, settings: Settings, service: RollbackService, client: WebClient):
        self.settings = settings
        self.service = service
        self.client = client
        self.notify = Notifier(client)
        self.mask = Masker(settings.secrets())
        self.groups = GroupDirectory(client, lambda: service.policy.group_ids())
        self.work = BoundedWork(4, WORK_QUEUE, "slack-work")

    def after_ack(self, handler):
        """A Bolt listener that acknowledges at once and runs ``handler(body, respond, groups_of)`` on our
        pool (Bolt's lazy listeners would deep-copy every request, half of their per-request cost)."""

        def listener(ack, body, respond, context):
            ack()
            masked = _masking_respond(respond, self.mask)
            if not self.work.submit(_run, handler, body, masked, context.get("groups_of", self.groups)):
                masked(text=BUSY, response_type="ephemeral", replace_original=False)

        return listener

    def announce(self, job: Job) -> None:
        """Rollback results go to the stage's notification channel too, when that is elsewhere; the
        deploy notification of the build it replaced says it is no longer live."""
        key = StageKey(job.service, job.stage)
        if job.is_app:  # each service that moved: its notification is no longer live
            for part in self.service.parts(job.id):
                if part.state is JobState.SUCCEEDED and part.recorded == Recorded.YES:
                    self.superseded(StageKey(part.service, part.stage))
        elif job.state is JobState.SUCCEEDED and job.recorded == Recorded.YES:
            self.superseded(key)
        channel = self.service.policy.notify_channel(key.stage, self.settings.channel,
                                                     None if job.is_app else key.service)
        if channel and channel != job.channel:
            verdict = {JobState.SUCCEEDED: "✅ rolled back", JobState.FAILED: "❌ rollback failed"}.get(
                job.state, str(job.state))
            if job.is_app and job.state is not JobState.SUCCEEDED:
                verdict = f"❌ app rollback {job.state}"
            if job.state is JobState.SUCCEEDED and job.recorded == Recorded.PENDING:
                verdict = "🟥 deployed but CI NOT frozen"
            if job.state is JobState.SUCCEEDED and job.recorded == Recorded.STALE:
                verdict = "🟧 deployed but not recorded (the stage moved on)"
            self.notify.post(channel, f"{verdict}: {code(job.where)} → {code(job.target_commit[:7])} "
                                      f"(job {job.id}) {esc_message(job.reason)}")

    def announce_unfreeze(self, key: StageKey, user_id: str, channel: str, was: str) -> None:
        """Everyone who watches the stage learns that CI may deploy it again: the channel where it was
        said, and the stage's notification channel when that is another."""
        what = code(f"{key.service} {key.stage}" if self.service.several else key.stage)
        text = f"🧊→✅ {user(user_id)} lifted the CI freeze on {what}: CI may deploy again. (It was: {esc(was)})"
        notify = self.service.policy.notify_channel(key.stage, self.settings.channel, key.service)
        for where in dict.fromkeys(c for c in (channel, notify) if c):
            self.notify.post(where, text)

    def on_job_event(self, job_id: int, event: Event) -> None:
        """A result that reached index.json late (after retries), or was dropped because the stage moved on
        meanwhile, is announced where the card is."""
        if event.step != "index" or event.status not in (EventStatus.RECORDED, EventStatus.STALE):
            return
        job = self.service.job(job_id)
        if not job or not job.channel:
            return
        if job.message_ts:
            self.notify.update(job.channel, job.message_ts, f"Rollback job {job_id}",
                               kit.progress_blocks(job, self.service.steps(job_id), [], time.time()))
        mark = "✅" if event.status is EventStatus.RECORDED else "🟧"
        self.notify.post(job.channel, f"{mark} Job {job_id}: {esc(event.text)}", thread_ts=job.message_ts or None)
        if event.status is EventStatus.RECORDED:
            self.superseded(StageKey(job.service, job.stage))

    def superseded(self, key: StageKey) -> None:
        try:
            edit_superseded(self.notify, self.service.index(key), key.service if self.service.several else "",
                            self.service.policy.notice_channels(key.stage, self.settings.channel, key.service))
        except Exception as exc:  # S3 unreadable: the notification stays as it was; nothing else depends on it
            log.warning("could not mark the deploy notification of %s as no longer live: %s", key, exc)

    def post_plan(self, key: StageKey, ref: str, actor: Actor, respond) -> None:
        pending = self.service.request(key, ref, actor)
        user_id, channel = actor.user, actor.channel
        try:
            posted = self.notify.post(channel, esc(kit.plan_title(pending.plan)), kit.plan_blocks(
                pending.plan, pending.job_id, user_id, pending.expires_at, time.time(), pending.needs,
                pending.policy_configured, pending.running, pending.ref), quiet=False)
        except SlackApiError as exc:
            self.service.withdraw(pending.job_id, actor)
            respond(f"I could not post the plan here ({esc(exc.response.get('error'))}). "
                    "Invite me to the channel with `/invite @rollback-bot` and try again.")
            return
        except Exception as exc:  # Slack unreachable: nothing was posted, so nothing may stay pending
            self.service.withdraw(pending.job_id, actor)
            log.warning("could not post a plan card: %s", exc)
            return
        self.service.attach_message(pending.job_id, posted["channel"], posted["ts"],
                                    self.notify.permalink(posted["channel"], posted["ts"]))

    def post_app_plan(self, stage: str, ref: str, actor: Actor, respond, undo: int | None = None) -> None:
        """The app's plan card (every service of the stage to one commit, or the newest deploy undone)."""
        apps = self.service.apps
        pending = apps.undo(undo, actor) if undo is not None else apps.request(stage, ref, actor)
        user_id, channel = actor.user, actor.channel
        card = self.service.job(pending.job_id).app_card
        try:
            posted = self.notify.post(channel, esc(kit.app_title(card, pending.app.stage)), kit.app_plan_blocks(
                pending.job_id, card, pending.app.stage, user_id, pending.expires_at, pending.needs,
                pending.policy_configured, pending.busy, pending.ref), quiet=False)
        except Exception as exc:  # nothing was posted, so nothing may stay pending
            self.service.withdraw(pending.job_id, actor)
            respond(f"I could not post the plan here ({esc(exc)}). Invite me with `/invite @rollback-bot`.")
            return
        self.service.attach_message(pending.job_id, posted["channel"], posted["ts"],
                                    self.notify.permalink(posted["channel"], posted["ts"]))
        if len(card.services) > 30:  # the card counts the rest; the thread lists them all
            self.notify.post(posted["channel"], esc(kit.app_details_text(card))[:39000], thread_ts=posted["ts"])

    def close_card(self, channel: str, ts: str, job: Job, why: str) -> None:
        self.notify.update(channel, ts, "Plan closed", kit.closed_plan_blocks(job.stage, job.target_commit, why))


def sweep_expired(service: RollbackService, client: WebClient) -> int:
    """The engine's housekeeping (expired plans closed, what is past retention pruned); then the cards of
    the plans whose buttons expired say so. Returns how many."""
    swept = service.housekeeping()
    notify = Notifier(client)
    for job in swept:
        if job.channel and job.message_ts:
            notify.update(job.channel, job.message_ts, "Plan expired", kit.closed_plan_blocks(
                job.stage, job.target_commit, "This plan expired; nothing was deployed."))
    return len(swept)


def _checked(body: dict, action_id: str) -> bool:
    for block in (body.get("state") or {}).get("values", {}).values():
        chosen = (block.get(action_id) or {}).get("selected_options") or []
        if any(o.get("value") == "unfreeze" for o in chosen):
            return True
    return False


def _masking_respond(respond, mask):
    def masked(text: str = "", **kwargs):
        return respond(text=mask(text) if text else text,
                       **{k: _masked(v, mask) if k == "blocks" else v for k, v in kwargs.items()})

    return masked


def _run(handler, body, respond, groups_of) -> None:
    try:
        handler(body, respond, groups_of)
    except Exception:  # the person already got their ack; the failure must at least be logged
        log.exception("handling a Slack request failed")


def read_log(path, limit: int = 50 * 1024**2) -> str:
    """A job's log file (already masked when written), at most ``limit`` bytes from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""

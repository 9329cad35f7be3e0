"""The Slack bot's composition root: build the engine and the Bolt app with its listeners, start up
(recovery, housekeeping, the alarm watch), and serve: Socket Mode when SLACK_APP_TOKEN is set, else
HTTP behind waitress."""

from __future__ import annotations

import functools
import gc
import io
import json
import logging
import sys
import threading
import time

from slack_bolt import App, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_sdk import WebClient

from bot.core.config import Settings
from bot.core.errors import UserError
from bot.core.jobs import Job
from bot.core.masking import Masker, mask_logs
from bot.core.policy import PolicySource
from bot.engine import Engine, RollbackService, build_fleet, make_watcher
from bot.slack import blocks as kit
from bot.slack.app import Slack, make_client, read_log, sweep_expired
from bot.slack.listeners import register
from bot.slack.mrkdwn import esc_message, user
from bot.slack.notifier import Notifier
from bot.slack.progress import ProgressReporter
from bot.slack.watch_posts import WatchPoster

log = logging.getLogger("rollback-bot")


def groups_middleware(slack: Slack):
    """Who the person is, group-wise, resolved at most once per request and only if a check needs it."""

    def middleware(context, next):
        context["groups_of"] = functools.lru_cache(maxsize=8)(slack.groups)
        next()

    return middleware


class ReplayGuard:
    """Slack signs a request with its timestamp, and Bolt accepts a signature for 5 minutes: anyone who
    saw one request (a proxy's log, say) could send it again within them. Each signature is taken once;
    a replay is answered 200 and does nothing. Bounded: expired ones go, and at most ``limit`` are kept."""

    WINDOW = 5 * 60 + 30  # Bolt's 5 minutes, and a little clock skew

    def __init__(self, limit: int = 20000, clock=time.time):
        self.seen: dict[str, float] = {}
        self.limit, self.clock = limit, clock
        self._lock = threading.Lock()

    def first_time(self, signature: str) -> bool:
        now = self.clock()
        with self._lock:
            if len(self.seen) >= self.limit:
                self.seen = {s: t for s, t in self.seen.items() if now - t < self.WINDOW}
                while len(self.seen) >= self.limit:  # a flood of valid signatures: forget the oldest
                    self.seen.pop(next(iter(self.seen)))
            if signature in self.seen and now - self.seen[signature] < self.WINDOW:
                return False
            self.seen[signature] = now
            return True


def replay_middleware(guard: ReplayGuard):
    def middleware(req, next):
        signature = (req.headers.get("x-slack-signature") or [""])[0]
        if signature and not guard.first_time(signature):  # Socket Mode has no signature: nothing to replay
            log.warning("ignored a replayed Slack request (a signature already seen)")
            return BoltResponse(status=200, body="")  # acknowledged; the chain stops here
        next()

    return middleware


class _SameToken(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment even when given a client, then warns that the
    client wins. Our client carries that same token (behind the mask), so the warning says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def quiet_same_token() -> None:
    bolt = logging.getLogger("slack_bolt.App")
    if not any(isinstance(f, _SameToken) for f in bolt.filters):
        bolt.addFilter(_SameToken())


def build_app(settings: Settings, engine: Engine, service: RollbackService, client: WebClient | None = None) -> App:
    """The Bolt app: one middleware, then the listeners of each kind (bot/slack/listeners/)."""
    slack = Slack(settings, service, client or make_client(settings))
    quiet_same_token()
    app = App(signing_secret=settings.slack_signing_secret or None, client=slack.client,
              process_before_response=True)
    app.use(replay_middleware(ReplayGuard()))  # runs after Bolt checked the signature
    app.use(groups_middleware(slack))
    service.on_job_events(slack.on_job_event)
    register(app, slack)
    return app


def wsgi_app(app: App, engine: Engine):
    """Bolt's own WSGI adapter at /slack/events, and a health check at /healthz for the platform.

    Bolt verifies every signature and dispatches; the listeners call ``ack()`` first and hand the work
    to the bot's pool, so Slack gets its answer in milliseconds (measured: benchmarks/slack_ack.py).
    In front of Bolt, one guard refuses junk without letting it reach Bolt: a body over 1 MB (413,
    before it is read), a body that is not UTF-8 (400) and a timestamp that is not a number (401).
    """
    bolt = SlackRequestHandler(app, path="/slack/events")

    def application(environ, start_response):
        path = environ.get("PATH_INFO")
        if path == "/healthz":
            body = json.dumps({"ok": True, "running_jobs": len(engine.store.jobs(states=["running"]))}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/slack/events" and environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return _plain(start_response, "400 Bad Request", "bad Content-Length")
            if length > MAX_BODY:  # refused before a byte of it is read
                return _plain(start_response, "413 Payload Too Large", "request body over 1 MB")
            raw = environ["wsgi.input"].read(length)
            try:
                raw.decode("utf-8")  # Slack sends UTF-8; anything else is junk, whoever signed it
            except UnicodeDecodeError:
                return _plain(start_response, "400 Bad Request", "body is not UTF-8")
            if not (environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP") or "").isdigit():
                log.warning("refused a Slack request with a bad or stale signature")
                return _plain(start_response, "401 Unauthorized", "Unauthorized")
            environ["wsgi.input"] = io.BytesIO(raw)  # Bolt reads the body again
        return bolt(environ, start_response)

    return application


MAX_BODY = 1024 * 1024


def _plain(start_response, status: str, text: str) -> list[bytes]:
    data = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def assemble(settings: Settings, engine: Engine | None = None) -> tuple[App, Engine, RollbackService]:
    """The app and its services, with no side effects: start-up work is ``start_up``. ``engine`` is the
    default service's (the only one, or ROLLBACK_SERVICE); every service's is in ``service.fleet``."""
    fleet = engine if engine is not None else build_fleet(settings)
    service = RollbackService(fleet, PolicySource(settings.policy, settings.config_path))
    engine = service.engine
    return build_app(settings, engine, service, make_client(settings)), engine, service


def start_up(settings: Settings, engine: Engine, service: RollbackService, client=None) -> threading.Event:
    """What the bot does once when it starts: log the policy in force, recover jobs a crash cut short
    (telling their channels), forget what is past retention, and start the housekeeping thread.
    Returns the event that stops that thread."""
    client = client or make_client(settings)
    for line in service.policy.describe():
        log.info("%s", line)
    if not service.policy.configured:
        log.warning("NO POLICY FILE (ROLLBACK_CONFIG): anyone in the workspace may request AND approve rollbacks")
    if service.several:
        log.info("serving %d services: %s", len(service.services), ", ".join(service.services))
    recovered = service.recover(reattach=True)
    for job in recovered.followed:  # CodeBuild jobs still running: their cards go on from where they were
        _follow_again(settings, service, client, job)
    for job in recovered.jobs:
        # Tell the stage's channel that a rollback was cut short and must be checked by a person.
        channel = service.policy.notify_channel(job.stage, settings.channel, job.service) or job.channel
        what = f"{job.service} {job.stage}" if service.several else job.stage
        if channel:  # a Slack failure here is logged and never stops the bot from starting
            Notifier(client).post(channel, f"⚠️ Rollback job {job.id} of `{esc_message(what)}` was "
                                           f"interrupted by a restart. {esc_message(job.reason)}")
    for app in recovered.apps:  # after the services' own jobs: the app says who is where
        _app_interrupted(service, settings, Notifier(client), app)
    housekeeping(settings, engine, service, client)
    stop = threading.Event()
    threading.Thread(target=_housekeeping_loop, args=(settings, engine, service, client, stop),
                     name="rollback-housekeeping", daemon=True).start()
    if settings.watch_poll:  # the alarm watch: deploys and rollbacks, in their windows
        watcher = make_watcher(service)
        watcher.listeners.append(WatchPoster(Notifier(client), service, settings))
        threading.Thread(target=watcher.run, args=(stop,), name="rollback-watch", daemon=True).start()
    return stop


def _follow_again(settings: Settings, service: RollbackService, client, job: Job) -> None:
    """A job this bot followed before it restarted: its card shows the steps recorded so far and goes on."""
    if not (job.channel and job.message_ts):
        return
    reporter = ProgressReporter(client, service, job.id, job.channel, job.message_ts, start=False,
                                on_final=Slack(settings, service, client).announce,
                                full_log=lambda: read_log(service.log_path(job.id)))
    service.follow(job.id, reporter)  # first, so nothing is missed between the recorded steps and the next
    reporter.resume(service.steps(job.id), ended=service.job(job.id).state.final)
    reporter.start()


def _app_interrupted(service: RollbackService, settings: Settings, notify: Notifier, app: Job) -> None:
    """The app's card shows where each service was left (with the way back), and its channel is told."""
    parts = service.parts(app.id)
    if app.channel and app.message_ts:
        notify.update(app.channel, app.message_ts, f"App rollback {app.id}: interrupted",
                      kit.app_progress_blocks(app, parts, {}, time.time()))
    channel = service.policy.notify_channel(app.stage, settings.channel) or app.channel
    if channel:
        notify.post(channel, f"⚠️ App rollback {app.id} of `{esc_message(app.stage)}` was interrupted by a "
                             f"restart. {esc_message(app.reason)}", thread_ts=app.message_ts or None)


def housekeeping(settings: Settings, engine: Engine, service: RollbackService, client) -> None:
    """Close expired plans (their cards say so) and prune what is past retention; never raises."""
    try:
        sweep_expired(service, client)
        for orphan in service.orphans():
            _orphan_interrupted(settings, service, Notifier(client), orphan)
    except Exception:
        log.exception("housekeeping failed; trying again later")


def _orphan_interrupted(settings: Settings, service: RollbackService, notify: Notifier, orphan) -> None:
    """A job another replica ran, whose bot died: said once, by the replica that found it, on its card's
    thread and in the stage's channel."""
    lease, ticket, key = orphan.lease, orphan.ticket, orphan.key
    what = f"{key.service} {key.stage}" if service.several else key.stage
    when = time.strftime("%H:%M:%S UTC", time.gmtime(lease.until))
    text = (f"⚠️ Rollback of `{esc_message(what)}` approved by {user(ticket.closed_by or lease.approved_by)} "
            f"was interrupted: the bot running it ({esc_message(lease.host)}, job {lease.job} there) stopped "
            f"renewing its lease, which ran out at {when}. The stage is free again. Check the stack before "
            "doing anything else.")
    # the card's place comes from S3: it is edited only when a replica of this bot signed it there
    card = ticket.channel if ticket.channel and ticket.card_is_signed(service.shared.card_key) else ""
    if card:
        notify.update(card, ticket.message_ts, f"Rollback interrupted: {what}",
                      kit.interrupted_card_blocks(what, ticket.target_commit, text))
        notify.post(card, text, thread_ts=ticket.message_ts)
    elif ticket.channel:
        log.warning("plan %s: its card's place in S3 is not signed by this bot; only the stage's channel is told",
                    ticket.uid)
    channel = service.policy.notify_channel(key.stage, settings.channel, key.service)
    if channel and channel != card:
        notify.post(channel, text)


def _housekeeping_loop(settings, engine, service, client, stop: threading.Event) -> None:
    # at least once a lease's time: a replica that died is said, and its stage freed, within about two
    every = min(30.0, max(1.0, float(settings.lease_seconds)))
    while not stop.wait(every):
        housekeeping(settings, engine, service, client)


def socket_mode(app: App, settings: Settings):
    """The Socket Mode connection (SLACK_APP_TOKEN): Slack sends requests over a WebSocket the bot opens,
    so no public URL is needed. Listeners ack at once and work on our pool, so envelopes are acked fast."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    return SocketModeHandler(app, settings.slack_app_token)


def serve(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mask_logs(Masker(settings.secrets()))
    fleet = build_fleet(settings)
    try:
        warning = RollbackService(fleet, PolicySource(settings.policy, settings.config_path)).unsandboxed()
    except UserError as exc:  # before anything connects: required and no bubblewrap stops here
        print(f"rollback-bot: {exc}", file=sys.stderr)
        return 2  # a setting to fix, as the terminal's commands exit
    if warning:
        log.warning("%s", warning)
    app, engine, service = assemble(settings, fleet)
    start_up(settings, engine, service)
    if settings.slack_app_token:
        log.info("rollback-bot: Socket Mode")
        socket_mode(app, settings).start()
        return 0
    server = http_server(settings, app, engine)
    # What start-up built (Bolt, boto3's service models, settings) lives as long as the process: keep
    # it out of the garbage collector's full scans, which otherwise pause every thread for ~90 ms.
    gc.collect()
    gc.freeze()
    log.info("rollback-bot: HTTP on port %s at /slack/events", server.effective_port)
    server.run()
    return 0


def http_server(settings: Settings, app: App, engine: Engine, host: str = "0.0.0.0", port: int | None = None):
    """The app behind waitress (a production WSGI server); ``run()`` serves until ``close()``."""
    import waitress

    return waitress.create_server(wsgi_app(app, engine), host=host,
                                  port=settings.port if port is None else port, threads=16,
                                  max_request_body_size=MAX_BODY)

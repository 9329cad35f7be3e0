"""Serve the Bolt app: Socket Mode when SLACK_APP_TOKEN is set, else HTTP behind waitress."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from contextlib import contextmanager
from urllib.parse import parse_qs

from slack_bolt import App, BoltRequest
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier

from bot.core.config import Settings
from bot.core.masking import Masker, mask_logs
from bot.core.policy import PolicySource
from bot.engine.build import Engine, build_engine
from bot.engine.service import RollbackService
from bot.slack.app import BUSY, BoundedWork, build_app, make_client, sweep_expired
from bot.slack.mrkdwn import esc_message
from bot.slack.notifier import Notifier

log = logging.getLogger("rollback-bot")


def wsgi_app(app: App, engine: Engine, signing_secret: str):
    """Bolt at /slack/events and a health check at /healthz for the platform.

    Commands, clicks and events are answered as soon as their signature checks out, and Bolt handles
    them afterwards: the person sees their command accepted at once even while many others are being
    handled. Anything else (URL verification, SSL checks) goes through Bolt while Slack waits.
    """
    slack = SlackRequestHandler(app, path="/slack/events")
    verifier = SignatureVerifier(signing_secret)
    later = BoundedWork(2, DISPATCH_QUEUE, "slack-dispatch")
    turns = AnswersFirst()

    def dispatch(body: str, headers: dict[str, list[str]]) -> None:
        turns.wait_turn()
        try:
            resp = app.dispatch(BoltRequest(body=body, headers=headers))
        except Exception:  # already acknowledged: the failure can only be logged
            log.exception("handling an acknowledged Slack request failed")
            return
        if resp.status != 200:
            log.warning("Slack request acknowledged but refused by the app (HTTP %s): %s", resp.status, resp.body)

    def application(environ, start_response):
        path = environ.get("PATH_INFO")
        if path == "/healthz":
            body = json.dumps({"ok": True, "running_jobs": len(engine.store.jobs(states=["running"]))}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path != "/slack/events" or environ.get("REQUEST_METHOD") != "POST":
            return slack(environ, start_response)
        with turns.answering():
            return _answer(environ, start_response)

    def _answer(environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _plain(start_response, "400 Bad Request", "bad Content-Length")
        if length > MAX_BODY:  # refused before a byte of it is read
            return _plain(start_response, "413 Payload Too Large", "request body over 1 MB")
        raw = environ["wsgi.input"].read(length)
        try:
            body = raw.decode("utf-8")  # Slack sends UTF-8; anything else is junk, whoever signed it
        except UnicodeDecodeError:
            return _plain(start_response, "400 Bad Request", "body is not UTF-8")
        timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP") or ""
        # A timestamp that is not a number is a bad signature, not a crash.
        if not timestamp.isdigit() or not verifier.is_valid(body, timestamp, environ.get("HTTP_X_SLACK_SIGNATURE")):
            log.warning("refused a Slack request with a bad or stale signature")
            return _plain(start_response, "401 Unauthorized", "Unauthorized")
        headers = {k[5:].replace("_", "-").lower(): [v] for k, v in environ.items() if k.startswith("HTTP_")}
        headers["content-type"] = [environ.get("CONTENT_TYPE", "")]
        if not _acknowledge_early(body, headers["content-type"][0]):
            resp = app.dispatch(BoltRequest(body=body, headers=headers))
            start_response(f"{resp.status} {'OK' if resp.status == 200 else 'Error'}",
                           [(k, v) for k, vs in resp.headers.items() for v in vs])
            return [resp.body.encode("utf-8")]
        if not later.submit(dispatch, body, headers):
            log.warning("dispatch queue full: told the sender to try again")
            if "command" in parse_qs(body):  # a slash command's reply body is shown to its sender
                return _plain(start_response, "200 OK", BUSY)
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    return application


MAX_BODY = 1024 * 1024
DISPATCH_QUEUE = 256


def _plain(start_response, status: str, text: str) -> list[bytes]:
    data = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


class AnswersFirst:
    """Handling waits until no request has been answered for ``calm`` seconds (at most ``patience``):
    in a burst every person gets their acknowledgement before anyone's command competes with it
    for the CPU. The cost is a few milliseconds before the first reply of a burst."""

    def __init__(self, calm: float = 0.01, patience: float = 0.25):
        self.calm = calm
        self.patience = patience
        self._answering = 0
        self._last = 0.0
        self._quiet = threading.Condition()

    @contextmanager
    def answering(self):
        with self._quiet:
            self._answering += 1
        try:
            yield
        finally:
            with self._quiet:
                self._answering -= 1
                self._last = time.monotonic()
                self._quiet.notify_all()

    def wait_turn(self) -> None:
        deadline = time.monotonic() + self.patience
        with self._quiet:
            while (now := time.monotonic()) < deadline:
                if not self._answering and now - self._last >= self.calm:
                    return
                self._quiet.wait(min(self.calm, deadline - now))


def _acknowledge_early(body: str, content_type: str) -> bool:
    """Slash commands, button clicks and event callbacks expect an empty 200; other requests need Bolt's answer."""
    if content_type.startswith("application/json"):
        try:
            return json.loads(body).get("type") == "event_callback"
        except (ValueError, AttributeError):
            return False
    form = parse_qs(body)
    if "command" in form:
        return True
    try:
        return json.loads(form["payload"][0]).get("type") == "block_actions"
    except (KeyError, ValueError, AttributeError):
        return False


def assemble(settings: Settings, engine: Engine | None = None) -> tuple[App, Engine, RollbackService]:
    """The app and its services, with no side effects: start-up work is ``start_up``."""
    engine = engine or build_engine(settings)
    service = RollbackService(engine, PolicySource(settings.policy, settings.config_path))
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
    for job in engine.jobs.recover():
        # Tell the stage's channel that a rollback was cut short and must be checked by a person.
        channel = service.policy.notify_channel(job["stage"], settings.channel) or job.get("channel")
        if channel:  # a Slack failure here is logged and never stops the bot from starting
            Notifier(client).post(channel, f"⚠️ Rollback job {job['id']} of `{job['stage']}` was interrupted by a "
                                           f"restart. {esc_message(job['reason'])}")
    housekeeping(settings, engine, service, client)
    stop = threading.Event()
    threading.Thread(target=_housekeeping_loop, args=(settings, engine, service, client, stop),
                     name="rollback-housekeeping", daemon=True).start()
    return stop


def housekeeping(settings: Settings, engine: Engine, service: RollbackService, client) -> None:
    """Close expired plans and prune what is past retention; never raises."""
    try:
        sweep_expired(service, client)
        engine.store.prune(time.time() - settings.retention_days * 86400)
    except Exception:
        log.exception("housekeeping failed; trying again later")


def _housekeeping_loop(settings, engine, service, client, stop: threading.Event, every: float = 30.0) -> None:
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
    app, engine, service = assemble(settings)
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

    return waitress.create_server(wsgi_app(app, engine, settings.slack_signing_secret), host=host,
                                  port=settings.port if port is None else port, threads=16,
                                  max_request_body_size=MAX_BODY)

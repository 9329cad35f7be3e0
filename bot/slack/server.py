"""Serve the Bolt app: Socket Mode when SLACK_APP_TOKEN is set, else HTTP behind waitress."""

from __future__ import annotations

import json
import logging

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

from bot.approvals import Approvals
from bot.config import Settings
from bot.engine import Engine, build_engine
from bot.policy import Policy
from bot.slack.app import build_app, make_client

log = logging.getLogger("rollback-bot")


def wsgi_app(app: App, engine: Engine):
    """Bolt at /slack/events and a health check at /healthz for the platform."""
    slack = SlackRequestHandler(app, path="/slack/events")

    def application(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            body = json.dumps({"ok": True, "running_jobs": len(engine.store.jobs(states=["running"]))}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return slack(environ, start_response)

    return application


def assemble(settings: Settings, engine: Engine | None = None) -> tuple[App, Engine, Approvals]:
    engine = engine or build_engine(settings)
    approvals = Approvals(engine, Policy.from_toml(settings.policy))
    client = make_client(settings)
    for job in engine.jobs.recover():
        # Tell the stage's channel that a rollback was cut short and must be checked by a person.
        channel = approvals.policy.notify_channel(job["stage"], settings.channel) or job.get("channel")
        if channel:
            try:
                client.chat_postMessage(channel=channel, text=f"⚠️ Rollback job {job['id']} of `{job['stage']}` "
                                        f"was interrupted by a restart. {job['reason']}")
            except Exception as exc:  # a Slack failure here must not stop the bot from starting
                log.warning("could not announce interrupted job %s: %s", job["id"], exc)
    return build_app(settings, engine, approvals, client), engine, approvals


def serve(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, engine, approvals = assemble(settings)
    if not approvals.policy.configured:
        log.warning("NO POLICY FILE (ROLLBACK_CONFIG): anyone in the workspace may request AND approve rollbacks")
    if settings.slack_app_token:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        log.info("rollback-bot: Socket Mode")
        SocketModeHandler(app, settings.slack_app_token).start()
        return 0
    import waitress

    log.info("rollback-bot: HTTP on port %s at /slack/events", settings.port)
    waitress.serve(wsgi_app(app, engine), host="0.0.0.0", port=settings.port, threads=16)
    return 0

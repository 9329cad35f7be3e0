"""`rollback-bot` / `python -m bot`, the command line's composition root: read the settings once, then run
a command (with Slack handed in, when a token is set), serve Slack, or the demo."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from bot.core.config import ConfigError, Settings, load_settings
from bot.core.masking import Masker, mask_logs
from bot.terminal.commands import COMMANDS, EXIT_CONFIG, Outlets, build_parser, dispatch


def cmd_serve(args, settings: Settings) -> int:
    from bot.slack.server import serve  # the only command that needs slack_bolt

    return serve(settings)


def cmd_demo(args, settings: Settings) -> int:
    try:
        from bot.playground.demo import main
    except ImportError as exc:  # moto is the demo's embedded AWS, installed with the `demo` extra
        print(f"rollback-bot demo needs {exc.name}: pip install 'rollback-bot[demo]' (./scripts/demo does it)",
              file=sys.stderr)
        return EXIT_CONFIG
    return main(Path(args.data_dir) if args.data_dir else settings.data_dir / "demo", args.port)


def slack_outlets() -> Outlets:
    """Deploy notifications and people's names for the terminal's commands (Slack is optional for them)."""
    from bot.slack.notify import names, notify_deployed

    return Outlets(deployed=notify_deployed, names=names)

FACES = {"serve": (cmd_serve, ("engine", "slack")), "demo": (cmd_demo, ())}


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # the data folder (sqlite, logs, the mirror and its credentials) is the bot's alone
    args = build_parser().parse_args(argv)
    args.command = args.command or "serve"
    if args.command == "run-job":  # the job runner reads its spec and stdin, never the bot's settings
        from bot.engine import run_job

        return run_job(Path(args.spec))
    handler, needs = FACES.get(args.command) or COMMANDS[args.command]
    try:
        settings = load_settings(needs=needs, named_service=getattr(args, "service", None) or "")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.command in FACES:
        return handler(args, settings)
    logging.basicConfig(level=logging.WARNING, format="rollback-bot: %(levelname)s %(name)s: %(message)s")
    mask_logs(Masker(settings.secrets()))
    return dispatch(args, settings, slack_outlets())

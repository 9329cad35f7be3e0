"""Bots as their own processes: `rollback-bot serve` in HTTP mode against the Slack stand-in, each with
its own data folder, as replicas behind a load balancer or a bot restarted on its host."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bot.playground.slack import SlackStandIn, SlackUser
from tests.conftest import BUCKET
from tests.support.fast_service import DEPLOY_COMMAND, SERVICE
from tests.support.serverless_fixture import sls_env
from tests.support.slack_session import CHANNEL, SECRET
from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        time.sleep(0.1)
        return None


def bot_env(aws_env: dict, origin: Path, data: Path, standin: SlackStandIn, **extra: str) -> dict:
    return {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
            "ROLLBACK_REPO": str(origin), "ROLLBACK_DATA_DIR": str(data), "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND,
            "ROLLBACK_CHANNEL": "C-DEPLOYS", "ROLLBACK_WATCH_POLL": "0", "SLACK_BOT_TOKEN": "xoxb-test-bot-token",
            "SLACK_API_URL": standin.api_url, "SLACK_SIGNING_SECRET": SECRET, **extra}


class Replica:
    """One `rollback-bot serve` process, and the people of the channel as its users (Slack sends what they
    do to this replica)."""

    def __init__(self, env: dict, standin: SlackStandIn):
        self.env = env
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env={**env, "PORT": str(self.port)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.standin = standin
        url = f"http://127.0.0.1:{self.port}/slack/events"
        self.ana, self.bo, self.cy = (SlackUser(standin, url, SECRET, u, CHANNEL) for u in ("U-ANA", "U-BO", "U-CY"))
        wait_for(lambda: self.proc.poll() is not None or _listening(self.port), 60, "the bot to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"rollback-bot serve exited {self.proc.returncode}: {self.proc.stderr.read()}")

    def kill(self) -> None:
        """The host goes away: nothing is let go, nothing is said."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def new_cards(standin: SlackStandIn, before: int, timeout: float = 60.0) -> dict:
    """The first card (not a thread reply) posted in the channel after the first ``before``."""
    def top() -> list[dict]:
        return [m for m in standin.messages[CHANNEL] if not m.get("thread_ts")]

    return copy.deepcopy(wait_for(lambda: top()[before] if len(top()) > before else None, timeout, "a card"))


def cards(standin: SlackStandIn) -> int:
    return len([m for m in standin.messages[CHANNEL] if not m.get("thread_ts")])


def reply_after(standin: SlackStandIn, n: int, timeout: float = 60.0) -> str:
    return wait_for(lambda: standin.responses[n]["text"] if len(standin.responses) > n else None, timeout,
                    "an ephemeral reply")

"""Names for Slack user ids where Slack does not render mentions: the CLI and the files it writes.

Slack shows ``<@U123>`` as a name by itself; a terminal or a JSON export would show the raw id, which
means nothing in an incident review. ``users.info`` answers once per person a day, kept in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.core.text import clean
from bot.slack.mrkdwn import SLACK_USER_RE

if TYPE_CHECKING:
    from bot.adapters.store import Store

log = logging.getLogger("rollback-bot.slack")
NAME_TTL = 24 * 3600.0
MAX_NAME = 80


class People:
    def __init__(self, client, store: Store, clock: Callable[[], float] = time.time, ttl: float = NAME_TTL):
        self.client = client  # None without a Slack token: cached names, else the ids
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._seen: dict[str, str] = {}

    def name(self, who: str | None) -> str:
        """The person's display name; anything that is not a Slack user id (a CI actor, ``cli``) as it is."""
        who = who or ""
        if not SLACK_USER_RE.match(who):
            return who
        if who in self._seen:
            return self._seen[who]
        cached = self.store.person(who)
        if cached and self.clock() - cached["fetched"] < self.ttl or self.client is None:
            return self._seen.setdefault(who, cached["name"] if cached else who)
        try:
            found = self.client.users_info(user=who)["user"]
        except Exception as exc:  # Slack down or the user gone: the id (or the old name) still says who
            log.info("users.info %s: %s", who, exc)
            return self._seen.setdefault(who, cached["name"] if cached else who)
        profile = found.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or found.get("real_name") or found.get("name")
        name = clean(str(name or who))[:MAX_NAME].strip() or who
        self.store.remember_person(who, name)
        return self._seen.setdefault(who, name)

    def label(self, who: str | None) -> str:
        """``Ana Lima (U123)`` for a Slack user, the plain value for anything else."""
        name = self.name(who)
        return f"{name} ({who})" if name != who else name

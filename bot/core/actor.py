"""Who is acting, and from where: a person in Slack, an operator at a terminal, CI, or an alarm."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from bot.core.errors import UserError

SLACK_ID_RE = re.compile(r"^[UW][A-Z0-9-]{1,30}$")  # a Slack user ID (U…, W… on Enterprise Grid)


class Origin(StrEnum):
    """Where a request came from; recorded with every job."""

    SLACK = "slack"
    TERMINAL = "cli"
    CI = "ci"
    ALARM = "alarm"
    APP = "app"  # one service's job of an app rollback


def no_groups(user: str) -> set[str]:
    return set()


@dataclass(frozen=True)
class Actor:
    """A person (or CI, or an alarm) and where they act: the channel in Slack (None at a terminal),
    and how to learn their user groups (Slack's, asked only when a policy check needs them)."""

    user: str
    origin: Origin = Origin.SLACK
    channel: str | None = None
    groups_of: Callable[[str], set[str]] = field(default=no_groups, compare=False)

    @classmethod
    def at_terminal(cls, name: str) -> Actor:
        return cls(terminal_operator(name), Origin.TERMINAL)

    @classmethod
    def in_slack(cls, user: str, channel: str | None, groups_of: Callable[[str], set[str]] = no_groups) -> Actor:
        return cls(user, Origin.SLACK, channel, groups_of)


def terminal_operator(name: str) -> str:
    """The operator a terminal command names (--by, ROLLBACK_ACTOR, $USER). A terminal cannot prove it
    is a Slack user, so a name shaped like a Slack user ID is refused: the policy's Slack entries are
    for Slack, and terminal operators are named in it by their own names."""
    name = (name or "").strip() or "cli"
    if SLACK_ID_RE.match(name):
        raise UserError(f"`{name}` is a Slack user ID; a terminal cannot act as a Slack user. Name yourself as the "
                        "policy names terminal operators (for example `--by ana` with \"ana\" among the stage's "
                        "requesters and approvers), or use Slack.")
    if len(name) > 100 or any(ord(c) < 32 for c in name):
        raise UserError("--by must be a name of at most 100 printable characters.")
    return name

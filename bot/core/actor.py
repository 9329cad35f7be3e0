"""Who is acting, and from where: a person in Slack, an operator at a terminal, CI, or an alarm."""

from __future__ import annotations

import re

from bot.core.errors import UserError

SLACK_ID_RE = re.compile(r"^[UW][A-Z0-9-]{1,30}$")  # a Slack user ID (U…, W… on Enterprise Grid)


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

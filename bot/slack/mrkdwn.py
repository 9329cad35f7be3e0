"""What people wrote is data, never markup: the one place text becomes Slack mrkdwn.

Every Block Kit builder and every top-level ``text`` fallback passes outside text (commit subjects,
authors, build ids, reasons, log lines, names from the index) through ``esc``. Escaping ``&``, ``<``
and ``>`` leaves no way to write a mention, a channel ping or a disguised link; backticks become a
look-alike so nothing can close a code span or a code block the bot opened.
"""

from __future__ import annotations

import re

BACKTICK_LOOKALIKE = "\u02cb"  # ˋ modifier letter grave accent
SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9-]{1,30}$")
SLACK_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9-]{1,30}$")
LINK_RE = re.compile(r"^https://[^\s|<>]{1,500}$")


def esc(text: object) -> str:
    s = "" if text is None else str(text)
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("`", BACKTICK_LOOKALIKE))


def esc_message(text: object) -> str:
    """A message of the bot's own (an error, a refusal, a job's reason) that may quote values in
    backticks: no mention or link survives, and its code spans are kept only when every one of them
    closes; otherwise (a quoted value had a backtick) all backticks become the look-alike."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if s.count("```") % 2 or s.replace("```", "").count("`") % 2:
        s = s.replace("`", BACKTICK_LOOKALIKE)
    return s


def code(text: object) -> str:
    """Inline code that the text cannot break out of."""
    return f"`{esc(text)}`"


def user(who: object) -> str:
    """A Slack user ID as a mention; anything else (a CI actor, a name from the index) as plain text."""
    s = "" if who is None else str(who)
    if SLACK_USER_RE.match(s):
        return f"<@{s}>"
    return esc(s) or "someone"


def channel(cid: object) -> str:
    s = "" if cid is None else str(cid)
    return f"<#{s}>" if SLACK_CHANNEL_RE.match(s) else esc(s)


def link(url: object, label: str) -> str:
    """A link the bot itself made (a permalink from Slack); anything that is not a plain https URL
    is not linked at all."""
    s = "" if url is None else str(url)
    return f"<{s.replace('&', '&amp;')}|{esc(label)}>" if LINK_RE.match(s) else ""


def date(ts: float, fallback: str = "") -> str:
    """A time every reader sees in their own time zone (Slack's date token)."""
    import time as _time

    text = fallback or _time.strftime("%Y-%m-%d %H:%M UTC", _time.gmtime(ts))
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{esc(text)}>"

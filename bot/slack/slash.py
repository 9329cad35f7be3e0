"""Parse the text of `/rollback …` into what the person asked for. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from bot.core.catalog import COMMAND_WORDS
from bot.core.names import closest

COMMANDS = (  # one line each, for help (a bot of one service)
    ("/rollback <stage>", "the stage's recent builds: live and bad ones marked, a button on each"),
    ("/rollback <stage> <sha|build-id|previous>", "a plan card: what would change, with Approve and Cancel"),
    ("/rollback status", "running rollbacks and frozen stages"),
    ("/rollback history <stage>", "past rollbacks of the stage: who, when, from → to, outcome"),
    ("/rollback unfreeze <stage>", "let CI deploy the stage again (approvers)"),
    ("/rollback cancel <stage>", "stop the stage's running rollback"),
    ("/rollback help", "this"),
)
SEVERAL_COMMANDS = (  # a bot of several services
    ("/rollback <stage>", "a line per service: its live build, bad or frozen, and a button to its builds"),
    ("/rollback <service> <stage>", "the service's recent builds on the stage, a button on each"),
    ("/rollback <service> <stage> <sha|build-id|previous>", "a plan card for that service, with Approve and Cancel"),
    ("/rollback <stage> <sha|previous>", "the whole app back to that commit: one card, every service"),
    ("/rollback status", "running rollbacks and frozen stages, per service"),
    ("/rollback history [service] <stage>", "past rollbacks: who, when, from → to, outcome"),
    ("/rollback unfreeze <service> <stage>", "let CI deploy the service's stage again (approvers)"),
    ("/rollback cancel [service] <stage>", "stop the running rollback: the app's or the only one, or the service's"),
    ("/rollback help", "this"),
)
USAGE = " · ".join(f"`{syntax}`" for syntax, _ in COMMANDS)
SEVERAL_USAGE = " · ".join(f"`{syntax}`" for syntax, _ in SEVERAL_COMMANDS)
KEYWORDS = COMMAND_WORDS  # a service is never named like one (bot.core.catalog checks it at start-up)


@dataclass(frozen=True)
class Command:
    action: str  # help | list | plan | status | history | unfreeze | cancel | invalid
    stage: str = ""
    ref: str = ""
    error: str = ""
    service: str = ""  # "" when the words name none


def parse(text: str, services: Iterable[str] = ()) -> Command:
    """``services``: the names this bot serves. A first word that is one of them names the service
    (service and stage names never collide: start-up checks it)."""
    services = set(services)
    words = (text or "").split()
    if words and words[0].lower() not in KEYWORDS and words[0] in services:
        rest = parse(" ".join(words[1:]), ())
        if rest.action in ("list", "plan"):
            return replace(rest, service=words[0])
        return Command("invalid", error=f"Usage: `/rollback {words[0]} <stage>` or "
                                        f"`/rollback {words[0]} <stage> <sha|build-id|previous>`.")
    if len(words) == 3 and words[0].lower() in ("history", "unfreeze", "cancel") and words[1] in services:
        return Command(words[0].lower(), stage=words[2], service=words[1])
    if not words or words[0].lower() == "help":
        return Command("help")
    head = words[0].lower()
    if head == "status":
        if len(words) > 1:
            return Command("invalid", error="`/rollback status` takes no more words.")
        return Command("status")
    if head in ("history", "unfreeze", "cancel"):
        if len(words) != 2:
            return Command("invalid", error=f"Usage: `/rollback {head} <stage>`.")
        return Command(head, stage=words[1])
    if len(words) == 1:
        return Command("list", stage=words[0])
    if len(words) == 2:
        return Command("plan", stage=words[0], ref=words[1])
    if services and len(words) == 3:  # `/rollback hello prod previous`: a mistyped service
        guess = closest(words[0], services)
        hint = f" Did you mean `/rollback {guess} {' '.join(words[1:])}`?" if guess else ""
        return Command("invalid", error=f"This bot serves no service `{words[0]}`.{hint} Services: "
                                        + ", ".join(f"`{s}`" for s in sorted(services)) + ".")
    return Command("invalid", error=f"Too many words. Usage: {SEVERAL_USAGE if services else USAGE}")

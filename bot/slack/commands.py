"""Parse the text of `/rollback …` into what the person asked for. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

USAGE = (
    "`/rollback <stage>` builds of a stage · `/rollback <stage> <sha|build-id|previous>` plan a rollback · "
    "`/rollback status` · `/rollback history <stage>` · `/rollback unfreeze <stage>` · "
    "`/rollback cancel <stage>` · `/rollback help`"
)
KEYWORDS = {"help", "status", "history", "unfreeze", "cancel"}


@dataclass(frozen=True)
class Command:
    action: str  # help | list | plan | status | history | unfreeze | cancel | invalid
    stage: str = ""
    ref: str = ""
    error: str = ""


def parse(text: str) -> Command:
    words = (text or "").split()
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
    return Command("invalid", error=f"Too many words. Usage: {USAGE}")

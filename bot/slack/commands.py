"""Parse the text of `/rollback …` into what the person asked for. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = (  # one line each, for help
    ("/rollback <stage>", "the stage's recent builds: live and bad ones marked, a button on each"),
    ("/rollback <stage> <sha|build-id|previous>", "a plan card: what would change, with Approve and Cancel"),
    ("/rollback status", "running rollbacks and frozen stages"),
    ("/rollback history <stage>", "past rollbacks of the stage: who, when, from → to, outcome"),
    ("/rollback unfreeze <stage>", "let CI deploy the stage again (approvers)"),
    ("/rollback cancel <stage>", "stop the stage's running rollback"),
    ("/rollback help", "this"),
)
USAGE = " · ".join(f"`{syntax}`" for syntax, _ in COMMANDS)
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

"""What an app rollback's card showed, as a typed snapshot: stored with the job when the card is posted,
compared at the click, and read back by every face (the card, its live checklist, the terminal).

The stored form is JSON in the job's ``plan_json``; only this module reads or writes it, and it treats
what it reads as untrusted (a missing or odd field is an empty value, never a crash in a face).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ServiceRow:
    """One service's line on the card."""

    service: str
    status: str  # roll | at_target | no_build | untouched (bot.engine.app.StepStatus)
    note: str = ""
    live: tuple[str, str] | None = None  # (commit, build) live when the card was posted
    target: tuple[str, str] | None = None  # (commit, build) it moves to
    commits: int = 0  # commits undone (or brought back)
    plugins: str = ""  # the plugin change, in words
    removed: int = 0  # CloudFormation resources its target removes
    account: str = ""

    @property
    def moves(self) -> bool:
        return self.status == "roll"


@dataclass(frozen=True)
class AppCard:
    ref: str
    commit: str
    services: tuple[ServiceRow, ...] = ()
    phases: tuple[tuple[str, ...], ...] = ()
    warnings: tuple[str, ...] = ()
    forward: bool = False
    summary: dict = field(default_factory=dict, compare=False)  # what the approval compares, per service

    @property
    def moving(self) -> list[str]:
        return [s.service for s in self.services if s.moves]

    @property
    def undo_of(self) -> int | None:
        """The app job whose finished services this card rolls forward again, if it is such a card."""
        rest = self.ref[5:] if self.ref.startswith("undo:") else ""
        return int(rest) if rest.isdigit() else None

    def to_json(self) -> str:
        doc = asdict(self)
        rows = []
        for s in doc["services"]:
            s["from"], s["to"] = s.pop("live"), s.pop("target")
            rows.append(s)
        doc["services"] = rows
        return json.dumps({"app": True, **doc})

    @classmethod
    def parse(cls, text: str | None) -> AppCard:
        try:
            doc = json.loads(text or "{}")
        except ValueError:
            doc = {}
        return cls.from_dict(doc if isinstance(doc, dict) else {})

    @classmethod
    def from_dict(cls, doc: dict) -> AppCard:
        def pair(value) -> tuple[str, str] | None:
            return (str(value[0]), str(value[1])) if isinstance(value, list | tuple) and len(value) == 2 else None

        def items(value) -> list:
            return value if isinstance(value, list) else []

        def number(value) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        rows = tuple(ServiceRow(str(s.get("service", "")), str(s.get("status", "")), str(s.get("note") or ""),
                                pair(s.get("from")), pair(s.get("to")), number(s.get("commits")),
                                str(s.get("plugins") or ""), number(s.get("removed")), str(s.get("account") or ""))
                     for s in items(doc.get("services")) if isinstance(s, dict))
        phases = tuple(tuple(str(n) for n in p) for p in items(doc.get("phases")) if isinstance(p, list))
        summary = doc.get("summary") if isinstance(doc.get("summary"), dict) else {}
        return cls(str(doc.get("ref") or ""), str(doc.get("commit") or ""), rows, phases,
                   tuple(str(w) for w in items(doc.get("warnings"))), bool(doc.get("forward")), summary)

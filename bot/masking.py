"""Mask secrets in text that leaves the process (recorded logs, Slack, the terminal)."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# Shapes of credentials that may show up in tool output even when we were never told the value.
PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bxox[abposr]-[0-9A-Za-z-]{8,}"),  # Slack tokens
    re.compile(r"\bxapp-[0-9A-Za-z-]{8,}"),
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token)(\s*[=:]\s*)\S+"),
]


class Masker:
    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a secret containing another is masked whole. Very short values would
        # mask ordinary words; those are left to the patterns.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern in PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) + m.group(2) + MASK) if m.re.groups == 2 else MASK, text)
        return text

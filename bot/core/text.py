"""Text from outside, made safe to print: no control characters."""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """Text from outside (commit subjects, log lines, names) without control characters: no escape
    sequence in a commit subject can rewrite the operator's terminal."""
    return CONTROL.sub("?", text)

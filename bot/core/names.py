"""Closest names, for "did you mean …?" when a stage (or later a service) is mistyped."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name.lower(), sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None

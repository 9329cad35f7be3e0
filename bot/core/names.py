"""Closest names, for "did you mean …?" when a stage or a service is mistyped."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str]) -> str | None:
    """The one known name that ``name`` probably meant: a near spelling (``prd`` → ``prod``), or the only
    name it begins (``hello`` → ``hello-service``)."""
    known = sorted(known)
    lowered = name.lower()
    matches = difflib.get_close_matches(lowered, known, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    begun = [k for k in known if len(lowered) >= 3 and k.lower().startswith(lowered)]
    return begun[0] if len(begun) == 1 else None

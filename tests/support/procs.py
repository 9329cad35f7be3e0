"""Processes seen from the host: a sandboxed job's pids are its own namespace's, so tests find what a job
runs by a marker in its command line instead of a pid it writes down."""

from __future__ import annotations

import os
import uuid


def marker() -> str:
    return f"rollback-test-{uuid.uuid4().hex}"


def pids_with(mark: str) -> list[int]:
    """Host pids whose command line contains ``mark`` (bubblewrap's own included: it names the command)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found

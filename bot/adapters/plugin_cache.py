"""Installed plugins (node_modules) cached by the hash of package.json, the lockfile and the command.

One cache per AWS account (``for_account``). In a sandbox (bot/adapters/sandbox.py) a job sees an
entry's tree read-only, mounted where its node_modules would be: nothing is copied, and nothing a job
does can change what the next job runs. Without one, each entry keeps a master that no job uses and a
spare, a real copy made in the background, which a job takes with one rename: the warm install costs
no per-file work on the rollback's path, and the copy is the job's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path


def copy_tree(src: Path, dst: Path) -> None:
    """A real copy (never hard links: a job that writes into its node_modules must not change the cache)."""
    shutil.copytree(src, dst, symlinks=True)


def cache_key(service_dir: Path, lockfile: Path | None, command: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (service_dir / "package.json", lockfile):
        if part is not None and part.is_file():
            h.update(part.name.encode() + b"\0" + part.read_bytes() + b"\0")
    h.update("\0".join(command).encode())
    return h.hexdigest()[:32]


def tree_bytes(root: Path) -> int:
    """Bytes a tree holds on disk, each file counted once however many links it has."""
    seen, total = set(), 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class PluginCache:
    def __init__(self, root: Path, background: Callable[[Callable[[], None]], None] = lambda fn: fn(),
                 max_bytes: int = 10 * 1024**3, spares: int = 1):
        self.root = root
        self.background = background
        self.max_bytes = max_bytes
        # Pre-linked copies kept ready per entry: an app rollback's services with one lockfile install
        # at the same time, each taking a spare with one rename.
        self.spares = max(1, spares)

    def _touch(self, key: str) -> None:
        """Remember when an entry was last used, for eviction."""
        used = self.root / key / ".used"
        try:
            used.touch()
        except OSError:
            pass

    def evict(self, keep: str = "") -> list[str]:
        """Remove the least recently used entries until the cache fits in ``max_bytes``."""
        entries = []
        for entry in self.root.glob("*"):
            if entry.name.startswith(".") or not (entry / "node_modules").is_dir():
                continue
            used = entry / ".used"
            when = used.stat().st_mtime if used.exists() else entry.stat().st_mtime
            entries.append((when, entry))
        sizes = {entry: tree_bytes(entry) for _, entry in entries}
        total = sum(sizes.values())
        removed = []
        for _, entry in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if entry.name == keep:
                continue
            doomed = self.root / f".evict-{uuid.uuid4().hex}"
            try:
                entry.rename(doomed)  # out of sight first: a job never takes a half-deleted entry
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            total -= sizes[entry]
            removed.append(entry.name)
        return removed

    def for_account(self, account: str) -> PluginCache:
        """The cache of the jobs of one AWS account: what a dev account's job installed is never what a
        prod account's job runs, even for the same lockfile."""
        name = "account-" + hashlib.sha256((account or "own credentials").encode()).hexdigest()[:12]
        return PluginCache(self.root / name, self.background, self.max_bytes, self.spares)

    def path(self, key: str) -> Path | None:
        """The cached tree for ``key``, for a job to see read-only (in its sandbox); None on a miss."""
        master = self._master(key)
        if not master.is_dir():
            return None
        self._touch(key)
        return master

    def adopt(self, key: str, installed: Path) -> Path:
        """Move a freshly installed tree into the cache (one rename) and return where it now is; when another
        job filled the entry first, ours is dropped and theirs returned."""
        master = self._master(key)
        if not master.is_dir():
            tmp = self.root / f".{key}.tmp-{uuid.uuid4().hex}"
            tmp.mkdir(parents=True)
            installed.rename(tmp / "node_modules")
            try:
                tmp.rename(self.root / key)
            except OSError:  # filled meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                self._touch(key)
                self.background(lambda: self.evict(keep=key))
                return master
        shutil.rmtree(installed, ignore_errors=True)
        self._touch(key)
        return master

    def _master(self, key: str) -> Path:
        return self.root / key / "node_modules"

    def restore(self, key: str, target: Path) -> bool:
        """Put a private node_modules for ``key`` at ``target``; False on a cache miss."""
        master = self._master(key)
        if not master.is_dir():
            return False
        if not self._take_spare(key, target):
            copy_tree(master, target)
        self._touch(key)
        self.background(lambda: self._make_spare(key))
        return True

    def store(self, key: str, installed: Path) -> None:
        """Keep a copy of a freshly installed node_modules (through a temporary name, so a
        half-copied entry is never used)."""
        entry = self.root / key
        if self._master(key).is_dir() or not installed.is_dir():
            return
        tmp = self.root / f".{key}.tmp-{uuid.uuid4().hex}"
        try:
            copy_tree(installed, tmp / "node_modules")
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another job filled it first; fine
            return
        self._touch(key)
        self.background(lambda: self._make_spare(key))
        self.background(lambda: self.evict(keep=key))

    def _take_spare(self, key: str, target: Path) -> bool:
        for spare in sorted((self.root / key).glob("spare-*")):
            claimed = target.parent / f".claimed-{uuid.uuid4().hex}"
            try:
                spare.rename(claimed)  # atomic: of two jobs racing for it, one wins
            except OSError:
                continue
            (claimed / "node_modules").rename(target)
            claimed.rmdir()
            return True
        return False

    def _make_spare(self, key: str) -> None:
        entry = self.root / key
        while self._master(key).is_dir() and len(list(entry.glob("spare-*"))) < self.spares:
            tmp = entry / f".spare-{uuid.uuid4().hex}.tmp"
            try:
                copy_tree(self._master(key), tmp / "node_modules")
                tmp.rename(entry / f"spare-{uuid.uuid4().hex}")
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                return

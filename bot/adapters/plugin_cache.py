"""Installed plugins (node_modules) cached by the hash of package.json, the lockfile and the command.

One cache per AWS account (``for_account``). In a sandbox (bot/adapters/sandbox.py) a job sees an
entry's tree read-only, mounted where its node_modules would be: nothing is copied, and nothing a job
does can change what the next job runs. Without one, each entry keeps a master that no job uses and a
spare, a real copy made in the background, which a job takes with one rename: the warm install costs
no per-file work on the rollback's path, and the copy is the job's own.

Each entry records a content hash of its tree when it is built (``.sha256``: every file's bytes, mode
and path, every link's target). A set is checked against it before a job uses it: in full the first
time and whenever the tree's files changed size or time since, otherwise by their sizes and times
alone (``.verified``), so a warm job does not read 100 MB it already checked. A set that does not
match is dropped and installed again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
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


def _entries(root: Path):
    """(relative path, DirEntry) of every file and link in a tree, in a stable order."""
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            found = sorted(it, key=lambda e: e.name)
        for entry in found:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                yield os.path.relpath(entry.path, root), entry


def tree_digest(root: Path) -> str:
    """The content hash of a tree: what it runs, byte for byte (paths, executable bits, link targets)."""
    h = hashlib.sha256()
    for rel, entry in _entries(root):
        if entry.is_symlink():
            h.update(f"L\0{rel}\0{os.readlink(entry.path)}\0".encode())
            continue
        h.update(f"F\0{rel}\0{entry.stat(follow_symlinks=False).st_mode & 0o111}\0".encode())
        with open(entry.path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def tree_fingerprint(root: Path) -> str:
    """Paths, sizes, modification times and executable bits of a tree's files, and its links' targets (a
    copy made with copy_tree keeps them all): it changes whenever a file is written. GNU find reads the
    12,000 files of a real plugin set in about 60 ms, a third of what Python's own walk takes."""
    try:
        out = subprocess.run(["find", str(root), "-mindepth", "1", "-printf", r"%P\0%y\0%s\0%T@\0%m\0%l\0"],
                             capture_output=True, timeout=120, check=True, env={"LC_ALL": "C", "PATH": os.defpath}
                             ).stdout
    except (OSError, subprocess.SubprocessError):
        return _walk_fingerprint(root)
    fields = out.split(b"\0")[:-1]
    rows = []
    for i in range(0, len(fields) - 5, 6):
        path, kind, size, mtime, mode, link = fields[i:i + 6]
        if kind == b"d":
            continue
        rows.append(path + b"\0L\0" + link if kind == b"l" else
                    path + b"\0F\0" + size + b"\0" + mtime + b"\0" + str(int(mode, 8) & 0o111).encode())
    h = hashlib.sha256(b"find\0")
    for row in sorted(rows):
        h.update(row + b"\0")
    return h.hexdigest()


def _walk_fingerprint(root: Path) -> str:
    h = hashlib.sha256(b"walk\0")
    for rel, entry in _entries(root):
        if entry.is_symlink():
            h.update(f"L\0{rel}\0{os.readlink(entry.path)}\0".encode())
        else:
            st = entry.stat(follow_symlinks=False)
            h.update(f"F\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode & 0o111}\0".encode())
    return h.hexdigest()


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
        self.dropped: dict[str, str] = {}  # entries dropped by check(), and why
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

    def _record(self, entry: Path) -> None:
        tree = entry / "node_modules"
        (entry / ".sha256").write_text(tree_digest(tree))
        (entry / ".verified").write_text(tree_fingerprint(tree))

    def check(self, key: str) -> bool:
        """Whether the entry for ``key`` still holds what was installed; one that does not (or that has no
        recorded hash) is dropped, and ``dropped`` says why."""
        entry = self.root / key
        if not self._master(key).is_dir():
            return False
        try:
            recorded = (entry / ".sha256").read_text().strip()
            fingerprint = tree_fingerprint(self._master(key))
            if (entry / ".verified").read_text().strip() == fingerprint:
                return True
            actual = tree_digest(self._master(key))
        except OSError:
            recorded, actual, fingerprint = "", "none", ""
        if recorded and actual == recorded:
            (entry / ".verified").write_text(fingerprint)
            return True
        self.dropped[key] = (f"the cached plugin set no longer matches the content hash recorded when it was built "
                             f"({recorded[:12] or 'none'}…, now {actual[:12]}…): dropped, and installed again")
        doomed = self.root / f".evict-{uuid.uuid4().hex}"
        try:
            entry.rename(doomed)
        except OSError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        return False

    def path(self, key: str) -> Path | None:
        """The cached tree for ``key``, for a job to see read-only (in its sandbox); None on a miss."""
        master = self._master(key)
        if not self.check(key):
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
            self._record(tmp)
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
        if not self.check(key):
            return False
        took = self._take_spare(key, target)
        if took and tree_fingerprint(target) != (self.root / key / ".verified").read_text().strip():
            shutil.rmtree(target, ignore_errors=True)  # a spare changed since it was copied: copy afresh
            took = False
        if not took:
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
            self._record(tmp)
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

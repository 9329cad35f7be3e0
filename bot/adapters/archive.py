"""Zip a Serverless package folder reproducibly, and unzip one without trusting it."""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

TEMPLATE_NAME = "cloudformation-template-update-stack.json"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold; any fixed value would do
CHUNK = 1024 * 1024


class PackageError(Exception):
    """The folder or the archive is not something we can deploy."""


class UnsafeArchiveError(PackageError):
    """An entry would land outside the folder it is unpacked into, is a link, or the archive would
    exhaust the machine (too many entries, too large unpacked, a zip bomb)."""


@dataclass(frozen=True)
class Limits:
    """What an archive may unpack to. A Serverless package is a few zips and two JSON files; the
    defaults leave room for large ones and none for a bomb."""

    max_entries: int = 10_000
    max_total: int = 2 * 1024**3  # bytes unpacked (ROLLBACK_MAX_UNPACKED_MB)
    max_ratio: int = 200  # uncompressed / compressed, for entries over RATIO_FLOOR bytes


RATIO_FLOOR = 1024 * 1024  # small files compress well legitimately (templates, JSON)


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int


def file_digest(path: Path) -> Digest:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return Digest(h.hexdigest(), size)


def check_package_dir(package_dir: Path) -> list[Path]:
    """The files of a package folder, sorted; raises if it is not a Serverless package."""
    if not package_dir.exists():
        raise PackageError(f"package folder {package_dir} does not exist; run `serverless package` first")
    if not package_dir.is_dir():
        raise PackageError(f"{package_dir} is not a folder; pass the folder `serverless package` wrote")
    files = sorted(
        (p for p in package_dir.rglob("*") if p.is_file() and not p.is_symlink()),
        key=lambda p: p.relative_to(package_dir).as_posix(),
    )
    if not files:
        raise PackageError(f"package folder {package_dir} is empty; run `serverless package` first")
    if not (package_dir / TEMPLATE_NAME).is_file():
        raise PackageError(
            f"{package_dir} is not a Serverless package: it has no {TEMPLATE_NAME}. "
            "Pass the folder given to `serverless package --package`"
        )
    return files


def zip_package(package_dir: Path, dest: Path) -> Digest:
    """Write ``package_dir`` to ``dest`` as a zip whose bytes depend only on the files' contents.

    Sorted entries, a fixed timestamp and fixed permissions, so the same folder always gives the
    same sha256, whatever its mtimes or the order the file system lists it in.
    """
    files = check_package_dir(package_dir)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(package_dir).as_posix(), date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode below is honoured
            executable = os.stat(path).st_mode & stat.S_IXUSR
            info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
            with open(path, "rb") as src, zf.open(info, "w") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
    return file_digest(dest)


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def check_limits(zf: zipfile.ZipFile, limits: Limits) -> None:
    """Refuse an archive whose central directory promises too much. zipfile never yields more bytes
    than an entry declares, so checking the declared sizes bounds what unpacking can write."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(f"refusing the archive: {len(infos)} entries, more than {limits.max_entries}")
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeArchiveError(
                f"refusing entry {info.filename!r}: it unpacks {info.file_size} bytes from {info.compress_size}, "
                f"a ratio over {limits.max_ratio}:1 (a zip bomb?)")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"refusing entry {info.filename!r}: a link (rollback-bot never packages links)")
    if total > limits.max_total:
        raise UnsafeArchiveError(
            f"refusing the archive: it unpacks to {total} bytes, more than {limits.max_total} "
            "(ROLLBACK_MAX_UNPACKED_MB)")


def safe_extract(archive: Path, dest: Path, limits: Limits = Limits()) -> list[Path]:
    """Unzip ``archive`` into ``dest``, refusing any entry that would land outside it, any link, and
    any archive over ``limits``.

    Every entry is checked before anything is written, so a refused archive leaves nothing behind.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{archive.name} is not a valid zip archive ({exc})") from exc
    with zf:
        check_limits(zf, limits)
        plan: list[tuple[zipfile.ZipInfo, Path]] = []
        for info in zf.infolist():
            name = info.filename
            pure = PurePosixPath(name.replace("\\", "/"))
            if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
                raise UnsafeArchiveError(f"refusing entry {name!r}: absolute path")
            if ".." in pure.parts:
                raise UnsafeArchiveError(f"refusing entry {name!r}: it climbs out of the folder with '..'")
            target = (root / pure).resolve()
            if not _inside(root, target):
                raise UnsafeArchiveError(f"refusing entry {name!r}: it would land outside {dest}")
            plan.append((info, target))

        written = []
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode & 0o755)  # never setuid, setgid or world-writable
            written.append(target)
    return written


def read_members(zf: zipfile.ZipFile, names: list[str], max_bytes: int = 64 * 1024**2) -> dict[str, bytes]:
    """The named entries of an open archive (those present), each at most ``max_bytes``."""
    found = {}
    present = {i.filename: i for i in zf.infolist()}
    for name in names:
        info = present.get(name)
        if info is None:
            continue
        if info.file_size > max_bytes:
            raise UnsafeArchiveError(f"refusing entry {name!r}: {info.file_size} bytes, more than {max_bytes}")
        found[name] = zf.read(info)
    return found

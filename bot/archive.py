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
    """An entry would land outside the folder it is unpacked into."""


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


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Unzip ``archive`` into ``dest``, refusing any entry that would land outside it.

    Every entry is checked before anything is written, so a refused archive leaves nothing behind.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{archive.name} is not a valid zip archive ({exc})") from exc
    with zf:
        plan: list[tuple[zipfile.ZipInfo, Path, str | None]] = []
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
            link = None
            if stat.S_ISLNK(info.external_attr >> 16):
                link = zf.read(info).decode("utf-8", "replace")
                # no '..' at all: a chain of links could otherwise climb out after it is made
                if os.path.isabs(link) or ".." in PurePosixPath(link).parts \
                        or not _inside(root, (target.parent / link).resolve()):
                    raise UnsafeArchiveError(f"refusing entry {name!r}: a link to {link!r}, outside the folder")
            plan.append((info, target, link))

        written = []
        for info, target, link in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if link is not None:
                os.symlink(link, target)
            else:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(target, mode)
            written.append(target)
    return written

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from bot.adapters.archive import Limits, PackageError, UnsafeArchiveError, file_digest, safe_extract, zip_package
from tests.conftest import make_package


def test_same_folder_gives_the_same_bytes_whatever_the_mtimes(tmp_path):
    pkg = make_package(tmp_path / "pkg", "v1")
    first = zip_package(pkg, tmp_path / "a.zip")
    for p in pkg.iterdir():
        os.utime(p, (2_000_000_000, 2_000_000_000))
    second = zip_package(pkg, tmp_path / "b.zip")
    assert first == second
    other = zip_package(make_package(tmp_path / "pkg2", "v2"), tmp_path / "c.zip")
    assert other.sha256 != first.sha256


def test_round_trip_keeps_contents(tmp_path):
    pkg = make_package(tmp_path / "pkg", "v1")
    (pkg / "nested").mkdir()
    (pkg / "nested" / "x.txt").write_text("hello")
    zip_package(pkg, tmp_path / "a.zip")
    out = tmp_path / "out"
    safe_extract(tmp_path / "a.zip", out)
    assert (out / "nested" / "x.txt").read_text() == "hello"
    assert file_digest(out / "hello-service.zip") == file_digest(pkg / "hello-service.zip")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is empty"),
        (lambda p: (p.mkdir(), (p / "x.zip").write_text("z")), "not a Serverless package"),
        (lambda p: p.write_text("file"), "is not a folder"),
    ],
)
def test_folders_that_are_not_packages_are_refused(tmp_path, setup, message):
    target = tmp_path / "pkg"
    setup(target)
    with pytest.raises(PackageError, match=message):
        zip_package(target, tmp_path / "a.zip")


def _zip_with(tmp_path, name, data=b"x", link=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", "fine")
        info = zipfile.ZipInfo(name)
        if link:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    path = tmp_path / "evil.zip"
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize(
    "name, data, link",
    [
        ("../escape.txt", b"x", False),
        ("a/../../escape.txt", b"x", False),
        ("/etc/evil.txt", b"x", False),
        ("link", b"../../outside", True),
        ("link", b"/etc/passwd", True),
        ("link", b"sub/..", True),
    ],
)
def test_zip_slip_entries_are_refused_and_nothing_is_written(tmp_path, name, data, link):
    archive = _zip_with(tmp_path, name, data, link)
    dest = tmp_path / "target" / "inner"
    with pytest.raises(UnsafeArchiveError, match="refusing entry"):
        safe_extract(archive, dest)
    assert not (dest / "ok.txt").exists()  # checked before anything was written
    assert not (tmp_path / "target" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_every_link_is_refused_even_one_inside_the_folder(tmp_path):
    archive = _zip_with(tmp_path, "alias.txt", b"ok.txt", link=True)
    with pytest.raises(UnsafeArchiveError, match="a link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()


def _bomb(tmp_path, entries: dict[str, int]) -> Path:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, size in entries.items():
            zf.writestr(name, b"\0" * size)
    return path


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    archive = _bomb(tmp_path, {"ok.txt": 10, "bomb.bin": 50 * 1024 * 1024})  # 50 MB of zeros: ~1000:1
    assert archive.stat().st_size < 200_000
    with pytest.raises(UnsafeArchiveError, match="ratio over 200:1"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()


def test_too_many_entries_or_too_many_bytes_are_refused(tmp_path):
    many = _bomb(tmp_path, {f"f{i}.txt": 1 for i in range(30)})
    with pytest.raises(UnsafeArchiveError, match="30 entries, more than 20"):
        safe_extract(many, tmp_path / "out", Limits(max_entries=20))
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as zf:  # stored, so the ratio is 1:1: only the total catches it
        zf.writestr("a.bin", os.urandom(600_000))
        zf.writestr("b.bin", os.urandom(600_000))
    with pytest.raises(UnsafeArchiveError, match="unpacks to 1200000 bytes, more than 1000000"):
        safe_extract(big, tmp_path / "out2", Limits(max_total=1_000_000))
    assert safe_extract(big, tmp_path / "out3", Limits(max_total=2_000_000))  # within the limit: fine


def test_a_corrupt_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(PackageError, match="not a valid zip"):
        safe_extract(bad, tmp_path / "out")

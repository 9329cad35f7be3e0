"""The docs a newcomer reads: every link leads somewhere, every file they name exists, and the front
page stays a front page."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
                *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a path in backticks: `bot/engine/service.py`, `tests/support/fast_service.py`, `scripts/test`
NAMED = re.compile(r"`((?:bot|tests|benchmarks|scripts|docs|\.ci)/[\w./-]+)`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_named_file_exists(page):
    text = without_code_blocks(page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:: outside the repository
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists() or anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(target)
    for named in NAMED.findall(text):
        if not (ROOT / named.rstrip("/.")).exists():
            broken.append(named)
    assert not broken, f"{page.relative_to(ROOT)} names what does not exist: {broken}"


def test_the_front_page_is_short_and_is_the_package_description():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"] == "README.md"
    # the front page links every page in docs/ and the benchmarks' figures
    for page in [*(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"]:
        assert str(page.relative_to(ROOT)) in readme, f"README does not link {page.name}"


def test_figures_measured_on_one_machine_stay_off_the_front_page():
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if re.search(r"\b\d+(\.\d+)?\s?(ms|×)\b|\bmedian\b", line):
            assert "benchmarks/README.md" in line, f"a figure without its benchmark's link: {line!r}"

"""The architecture is checked, not only drawn: ./scripts/test's import checks pass on the tree as it is,
and fail on a copy of it that breaks each rule (a face importing an adapter, a face importing another
face, an import cycle)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def checks(tree: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "HOME": str(tree)}
    lint = subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    cycles = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_cycles.py")], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=120)
    return lint, cycles


@pytest.fixture
def tree(tmp_path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "bot", copy / "bot", ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def spoil(module: Path, line: str) -> None:
    text = module.read_text()
    marker = "from __future__ import annotations\n"
    module.write_text(text.replace(marker, marker + line + "\n", 1))


def test_the_tree_keeps_its_layers_and_has_no_cycle(tree):
    lint, cycles = checks(tree)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "BROKEN" not in lint.stdout and cycles.returncode == 0, cycles.stderr


def test_a_face_importing_an_adapter_fails(tree):
    spoil(tree / "bot" / "slack" / "blocks.py", "import bot.adapters.store  # noqa")
    lint, _ = checks(tree)
    assert lint.returncode != 0 and "never the adapters" in lint.stdout and "BROKEN" in lint.stdout


def test_a_face_importing_another_face_fails(tree):
    spoil(tree / "bot" / "slack" / "people.py", "import bot.terminal.render  # noqa")
    lint, _ = checks(tree)
    assert lint.returncode != 0 and "faces independent of each other BROKEN" in lint.stdout


def test_an_import_cycle_fails(tree):
    spoil(tree / "bot" / "core" / "names.py", "import bot.core.text  # noqa")
    spoil(tree / "bot" / "core" / "text.py", "import bot.core.names  # noqa")
    _, cycles = checks(tree)
    assert cycles.returncode == 1 and "import cycle: bot.core.names ↔ bot.core.text" in cycles.stderr


def test_the_engine_offers_what_it_lists_and_its_runner_starts_without_the_rest():
    """bot.engine loads its names on first use: each listed name resolves, and the job runner (started once
    per job) imports neither sqlite, nor Slack, nor the planner."""
    import bot.engine

    for name in bot.engine.__all__:
        assert getattr(bot.engine, name) is not None, name
    probe = ("import sys, bot.engine.job_process; "
             "print(' '.join(m for m in ('sqlite_utils', 'slack_bolt', 'bot.engine.planner', 'bot.engine.service')"
             " if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == ""

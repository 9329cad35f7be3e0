"""The real console script, run as CI and people run it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUCKET, SERVICE, make_package
from tests.support.gitrepo import ServiceRepo

SCRIPT = shutil.which("rollback-bot", path=str(Path(sys.executable).parent)) or shutil.which("rollback-bot")


@pytest.fixture
def run(aws_env, s3, tmp_path):
    assert SCRIPT, "the rollback-bot console script is not installed (pip install -e .)"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACK_", "SLACK_"))},
        **aws_env,
        "ROLLBACK_BUCKET": BUCKET,
        "ROLLBACK_SERVICE": SERVICE,
        "ROLLBACK_PREFIX": "rollback/",
        "ROLLBACK_DATA_DIR": str(tmp_path / "data"),
    }

    def run(*args, cwd=tmp_path, ok=True, **extra_env):
        proc = subprocess.run([SCRIPT, *args], cwd=cwd, env={**env, **extra_env},
                              capture_output=True, text=True, timeout=60)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


def test_ci_round_trip(run, tmp_path):
    repo = ServiceRepo(tmp_path / "service")
    sha1 = repo.commit("Add hello endpoint", {"serverless.yml": "service: hello\n"}, author="Ana Dev")
    sha2 = repo.commit("Make hello faster", {"handler.js": "//v2\n"}, author="Bo Ops")
    make_package(repo.path / ".serverless", "v1")

    # inside the repo, author and message come from git, and a short SHA is enough
    out = run("publish", "--stage", "prod", "--commit", sha1[:8], "--build-id", "101",
              "--package", ".serverless", "--deployed", cwd=repo.path).stdout
    assert f"published: prod {sha1[:7]} (build 101)" in out and "live on prod" in out
    make_package(repo.path / ".serverless", "v2")
    run("publish", "--stage", "prod", "--commit", sha2, "--build-id", "102", "--package", ".serverless",
        cwd=repo.path)
    again = run("publish", "--stage", "prod", "--commit", sha2, "--build-id", "102", "--package", ".serverless",
                cwd=repo.path).stdout
    assert "already published (unchanged)" in again
    run("mark-deployed", "--stage", "prod", "--commit", sha2)

    listing = run("list", "prod").stdout.splitlines()
    assert f"live {sha2[:7]} (build 102)" in listing[0] and "2 builds" in listing[0]
    assert listing[2].split()[:3] == ["live", sha2[:7], "102"] and "Bo Ops" in listing[2]
    assert "Make hello faster" in listing[2]
    assert listing[3].split()[:2] == [sha1[:7], "101"] and "Add hello endpoint" in listing[3]

    doc = json.loads(run("list", "prod", "--json").stdout)
    assert [(b["commit"], b["live"]) for b in doc["builds"]] == [(sha2, True), (sha1, False)]
    assert doc["builds"][1]["author"] == "Ana Dev"

    shown = json.loads(run("show", "prod", "previous", "--json").stdout)
    assert shown["commit"] == sha1 and shown["build_id"] == "101"

    pruned = run("prune", "--stage", "prod", "--keep", "1", "--dry-run").stdout
    assert "would remove 0" in pruned and "last known-good" in pruned


def test_cli_errors_say_what_to_do(run, tmp_path):
    proc = run("list", "prod", ok=False, ROLLBACK_BUCKET="", ROLLBACK_SERVICE="")
    assert proc.returncode == 2
    assert "ROLLBACK_BUCKET is not set" in proc.stderr and "ROLLBACK_SERVICE is not set" in proc.stderr

    proc = run("publish", "--stage", "prod", "--commit", "a" * 40, "--package", str(tmp_path / "nope"), ok=False)
    assert proc.returncode == 1 and "run `serverless package` first" in proc.stderr

    proc = run("show", "prod", "beef", ok=False)
    assert proc.returncode == 1 and "Stage `prod` has no builds" in proc.stderr
    assert "CI adds builds with `rollback-bot publish`" in proc.stderr

    proc = run("list", "prod", ok=False, ROLLBACK_BUCKET="missing-bucket")
    assert proc.returncode == 1 and "bucket 'missing-bucket' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_dash_m_bot_works(run):
    proc = subprocess.run([sys.executable, "-m", "bot", "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("rollback-bot ")

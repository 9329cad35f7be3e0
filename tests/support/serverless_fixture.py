"""The test Serverless service in a real git repository, packaged by the real CLI (osls)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import git
import pytest

from bot.playground.sample import SOURCE as SERVICE_SRC  # the service the demo deploys too
from bot.playground.sample import handler, worktree
from tests.support.gitrepo import ServiceRepo

SLS_BIN = SERVICE_SRC / "node_modules" / ".bin" / "serverless"
BROKEN_YML = "service: hello-service\nprovider:\n  name: aws\n  runtime: [unclosed\n"


def require_serverless() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed; ./scripts/test installs them (apt-get install nodejs npm)")
    if not SLS_BIN.exists():
        pytest.skip("bot/playground/sample_service/node_modules is missing; ./scripts/test runs `npm ci` there")


def sls_env(aws_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACK_", "SLACK_", "AWS_"))}
    env.update(aws_env)
    env.update({"SLS_AWS_MONITORING_FREQUENCY": "200", "SLS_TELEMETRY_DISABLED": "1", "NODE_NO_WARNINGS": "1"})
    return env


@dataclass
class Build:
    name: str
    commit: str
    package: Path  # the folder `serverless package` wrote


@dataclass
class ServiceHistory:
    origin: Path  # what ROLLBACK_REPO points to
    work: ServiceRepo
    builds: dict[str, Build] = field(default_factory=dict)


def package_commit(repo: ServiceRepo, commit: str, out: Path, env: dict) -> Path:
    """`serverless package` at ``commit``, as CI does, with the plugins from the sample service."""
    with worktree(repo.path, out.parent / f"tree-{out.name}", commit, SERVICE_SRC / "node_modules") as tree:
        proc = subprocess.run([str(SLS_BIN), "package", "--stage", "prod", "--package", str(out)],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def build_history(root: Path, aws_env: dict) -> ServiceHistory:
    require_serverless()
    work = ServiceRepo(root / "work")
    base = {name: (SERVICE_SRC / name).read_text()
            for name in ("package.json", "package-lock.json", "serverless.yml")}
    (work.path / ".gitignore").parent.mkdir(parents=True, exist_ok=True)
    c1 = work.commit("Hello v1", {**base, ".gitignore": "node_modules/\n.serverless/\n", "handler.js": handler("v1")})
    c2 = work.commit("Make hello say v2", {"handler.js": handler("v2")}, author="Bo Ops")
    c3 = work.commit("Break serverless.yml", {"serverless.yml": BROKEN_YML}, author="Cy Hasty")
    origin = root / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    history = ServiceHistory(origin, work)
    env = sls_env(aws_env)
    history.builds["v1"] = Build("v1", c1, package_commit(work, c1, root / "pkg-v1", env))
    history.builds["v2"] = Build("v2", c2, package_commit(work, c2, root / "pkg-v2", env))
    # the broken commit's package is v2's: it is the checkout's serverless.yml that fails
    history.builds["broken"] = Build("broken", c3, history.builds["v2"].package)
    return history


def ci_deploy(history: ServiceHistory, build: str, env: dict) -> None:
    """What CI does after packaging: `serverless deploy --package` from a checkout of the commit."""
    b = history.builds[build]
    tree = b.package.parent / f"deploy-{build}"
    with worktree(history.work.path, tree, b.commit, SERVICE_SRC / "node_modules"):
        proc = subprocess.run([str(SLS_BIN), "deploy", "--stage", "prod", "--package", str(b.package), "--force"],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr

"""Where a stage's deploys run: on the bot's host (the sandboxed job runner, the default) or as AWS
CodeBuild builds in the stage's own account (``executor = "codebuild"`` and the project's name in the
stage's table of the config file, or a service's table under it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# CodeBuild's own rule for a project's name
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_]{1,254}$")


class ExecutorKind(StrEnum):
    LOCAL = "local"
    CODEBUILD = "codebuild"


@dataclass(frozen=True)
class Executor:
    kind: ExecutorKind = ExecutorKind.LOCAL
    project: str = ""  # the CodeBuild project, in the stage's account and region

    @property
    def remote(self) -> bool:
        return self.kind is ExecutorKind.CODEBUILD

    def describe(self) -> str:
        return f"CodeBuild project {self.project}" if self.remote else "the bot's host"


LOCAL = Executor()


def parse_executor(table, label: str, problems: list[str]) -> Executor | None:
    """The executor a stage's (or a service's) table names; None when it names none."""
    if "executor" not in table and "codebuild_project" not in table:
        return None
    raw, project = table.get("executor", "local"), table.get("codebuild_project", "")
    try:
        kind = ExecutorKind(raw)
    except ValueError:
        problems.append(f"{label}: executor must be \"local\" or \"codebuild\", not {str(raw)[:40]!r}")
        return None
    if not isinstance(project, str) or (project and not PROJECT_RE.match(project)):
        problems.append(f"{label}: codebuild_project must be a CodeBuild project's name (letters, digits, - or _)")
        return None
    if kind is ExecutorKind.CODEBUILD and not project:
        problems.append(f"{label}: executor = \"codebuild\" needs codebuild_project = \"<the project's name in the "
                        "stage's account>\" (docs/codebuild.md has a template)")
        return None
    if kind is ExecutorKind.LOCAL and project:
        problems.append(f"{label}: codebuild_project means nothing with executor = \"local\"; add "
                        "executor = \"codebuild\" or remove it")
        return None
    return Executor(kind, project)

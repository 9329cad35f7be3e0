"""The service's git repository (gitpython)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import git


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    subject: str


def local_commit(ref: str, path: Path | str = ".") -> CommitInfo | None:
    """What the repository around ``path`` says about ``ref``; None outside a repository or
    when the commit is not there (CI may publish from a shallow or foreign checkout)."""
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    try:
        commit = repo.commit(ref)
        return CommitInfo(commit.hexsha, commit.author.name or "", str(commit.summary or ""))
    except (git.BadName, ValueError, git.GitCommandError):
        return None
    finally:
        repo.close()

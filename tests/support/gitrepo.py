"""Real git repositories in a temporary folder, for tests."""

from __future__ import annotations

from pathlib import Path

import git


class ServiceRepo:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.repo = git.Repo.init(path, initial_branch="main")
        with self.repo.config_writer() as cw:
            cw.set_value("user", "name", "Test Robot")
            cw.set_value("user", "email", "robot@example.com")
            cw.set_value("commit", "gpgsign", "false")

    def commit(self, message: str, files: dict[str, str], author: str = "Ana Dev") -> str:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self.repo.index.add(list(files))
        actor = git.Actor(author, f"{author.split()[0].lower()}@example.com")
        return self.repo.index.commit(message, author=actor, committer=actor).hexsha

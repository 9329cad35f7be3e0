"""The sample Serverless service the demo rolls back: a real git repository, its plugins installed
the way the bot installs them, every commit packaged and deployed by the real CLI (osls)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from bot.adapters.plugin_cache import PluginCache, cache_key
from bot.engine.pipeline import install_command

SOURCE = Path(__file__).parent / "sample_service"  # serverless.yml, package.json and its lockfile
SERVICE = "hello-service"
STAGE = "prod"
FUNCTION = f"{SERVICE}-{STAGE}-hello"
_VERSION = re.compile(r'const VERSION = "([^"]*)"')


def handler(version: str) -> str:
    return f'const VERSION = "{version}";\nmodule.exports.hello = async () => ({{ statusCode: 200, body: VERSION }});\n'


def version_in(code: str) -> str | None:
    """The version string a handler.js returns."""
    found = _VERSION.search(code)
    return found.group(1) if found else None


@dataclass(frozen=True)
class Change:
    version: str
    message: str
    author: str


HISTORY = (
    Change("v1", "Hello v1", "Ana Dev"),
    Change("v2", "Say v2: friendlier greeting", "Bo Ops"),
    Change("v3", "Say v3: the release that paged on-call", "Cy Hasty"),
)
# A second service in the same repository (a monorepo): its own serverless.yml under services/orders,
# changed by the first two commits only (pipelines deploy only what changed).
ORDERS = "orders"
ORDERS_DIR = "services/orders"
ORDERS_VERSIONS = ("orders v1", "orders v2")  # in HISTORY's first and second commits


@dataclass(frozen=True)
class Build:
    change: Change
    commit: str
    package: Path


class SampleService:
    """The service's repository under ``root``, kept between demo runs so its packages can be reused."""

    def __init__(self, root: Path, env: Mapping[str, str], log=print):
        self.root = root
        self.repo_dir = root / "repo"
        self.packages = root / "packages"
        self.env = dict(env)
        self.log = log

    # -- the repository --------------------------------------------------------------------------

    def commits(self) -> list[str]:
        """One commit per change in HISTORY, oldest first; made once and reused afterwards."""
        if (self.repo_dir / ".git").is_dir():
            repo = git.Repo(self.repo_dir)
            shas = [c.hexsha for c in repo.iter_commits("main", reverse=True)]
            repo.close()
            current = (self.repo_dir / "serverless.yml").is_file() and \
                (self.repo_dir / "serverless.yml").read_text() == (SOURCE / "serverless.yml").read_text()
            if len(shas) == len(HISTORY) and current and (self.repo_dir / ORDERS_DIR / "serverless.yml").is_file():
                return shas
            shutil.rmtree(self.repo_dir)  # made by an older demo: made again
        self.repo_dir.mkdir(parents=True)
        repo = git.Repo.init(self.repo_dir, initial_branch="main")
        with repo.config_writer() as cw:
            cw.set_value("commit", "gpgsign", "false")
        files = {name: (SOURCE / name).read_text() for name in ("serverless.yml", "package.json", "package-lock.json")}
        files.update({f"{ORDERS_DIR}/{name}": text for name, text in files.items()})
        files[f"{ORDERS_DIR}/serverless.yml"] = files["serverless.yml"].replace(f"service: {SERVICE}",
                                                                                f"service: {ORDERS}")
        files[".gitignore"] = "node_modules/\n.serverless/\n"
        shas = []
        for n, change in enumerate(HISTORY):
            files["handler.js"] = handler(change.version)
            if n < len(ORDERS_VERSIONS):
                files[f"{ORDERS_DIR}/handler.js"] = handler(ORDERS_VERSIONS[n])
            for name, text in files.items():
                (self.repo_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (self.repo_dir / name).write_text(text)
            repo.index.add(list(files))
            who = git.Actor(change.author, f"{change.author.split()[0].lower()}@example.com")
            shas.append(repo.index.commit(change.message, author=who, committer=who).hexsha)
            files = {"handler.js": ""}
        repo.close()
        return shas

    # -- plugins, packaging, deploying -----------------------------------------------------------

    def install_plugins(self, cache: PluginCache) -> None:
        """node_modules for the repository, through the bot's own plugin cache (so the demo's first
        rollback finds its plugins cached, as any later one would)."""
        target = self.repo_dir / "node_modules"
        if (target / ".bin" / "serverless").exists():
            return
        command, lockfile = install_command(self.repo_dir, None)
        key = cache_key(self.repo_dir, lockfile, command)
        if cache.restore(key, target):
            return
        self.log(f"  installing the service's plugins and the Serverless CLI (`{' '.join(command)}`, once)")
        self._run(command, self.repo_dir, timeout=900)
        cache.store(key, target)

    def package(self, commit: str, service_dir: str = ".") -> Path:
        """`serverless package` at ``commit`` in the service's folder, as CI does; reused when made before."""
        out = self.packages / (commit if service_dir == "." else f"{Path(service_dir).name}-{commit}")
        if (out / "cloudformation-template-update-stack.json").is_file():
            return out
        shutil.rmtree(out, ignore_errors=True)
        with self._checkout(commit) as tree:
            self._run([self.serverless, "package", "--stage", STAGE, "--package", str(out)], tree / service_dir)
        return out

    def deploy(self, commit: str, package: Path, service_dir: str = ".", env: Mapping[str, str] | None = None) -> None:
        """`serverless deploy --package`, what CI runs after packaging (``env``: the stage's account)."""
        with self._checkout(commit) as tree:
            self._run([self.serverless, "deploy", "--stage", STAGE, "--package", str(package), "--force"],
                      tree / service_dir, env=env)

    @property
    def serverless(self) -> str:
        return str(self.repo_dir / "node_modules" / ".bin" / "serverless")

    def _checkout(self, commit: str):
        return worktree(self.repo_dir, self.root / "trees" / commit[:12], commit, self.repo_dir / "node_modules")

    def _run(self, args: list[str], cwd: Path, timeout: float = 300, env: Mapping[str, str] | None = None) -> None:
        proc = subprocess.run(args, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(args))}` failed "
                               f"(exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


@contextmanager
def worktree(repo_dir: Path, path: Path, commit: str, node_modules: Path) -> Iterator[Path]:
    """A detached checkout of ``commit`` at ``path`` that uses the installed ``node_modules``,
    removed again afterwards: how CI packages and deploys one commit."""
    repo = git.Repo(repo_dir)
    try:
        if path.exists():
            shutil.rmtree(path)
            repo.git.worktree("prune")
        repo.git.worktree("add", "--detach", str(path), commit)
        (path / "node_modules").symlink_to(node_modules)
        yield path
    finally:
        repo.git.worktree("remove", "--force", str(path))
        repo.close()

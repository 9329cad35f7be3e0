"""The service's git repository (gitpython): a cached mirror, checkouts at a commit, what changed."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import git
import yaml

from bot.core.errors import UserError
from bot.core.masking import URL_USERINFO

LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml")
PLUGIN_FILES = ("package.json", *LOCKFILES)
# Where Serverless reads a service's configuration, in its own order of preference.
SERVICE_FILES = ("serverless.yml", "serverless.yaml", "serverless.json", "serverless.js", "serverless.ts")
GIT_TIMEOUT = 300  # seconds a fetch or clone may take before git is stopped
SHA_RE = re.compile(r"^[0-9a-f]{4,64}$")
# git must never wait for a person (a credential prompt) or on a stalled connection.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true",
           "GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "60",
           "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=20"}


class SourceError(UserError):
    """The repository cannot give us what a rollback needs; the message says what to do."""


def split_credentials(url: str) -> tuple[str, str]:
    """(the URL without its user:token@, the user:token) — the token goes to git through a 0600 file."""
    match = re.match(r"^(https?://)([^/@]+)@(.*)$", url or "")
    if not match:
        return url, ""
    return match.group(1) + match.group(3), match.group(2)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, every link followed, stays in ``root``."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real == top or top in real.parents


def without_credentials(url: str) -> str:
    """A repository URL fit to show: https://user:token@host/x becomes https://***@host/x."""
    return URL_USERINFO.sub(r"\1***@", url or "")


def _git_says(exc: git.GitCommandError) -> str:
    """git's own words from a failed command, without gitpython's wrapping, and without any URL's
    credentials (git quotes the URL it could not reach)."""
    text = str(exc.stderr or exc).strip()
    text = text.removeprefix("stderr:").strip().strip("'").strip()
    text = URL_USERINFO.sub(r"\1***@", text)
    return " ".join(text.split())


def _sha(value: str) -> str:
    """A commit id for git: hex only, so nothing from the index or a user is ever read as an option."""
    if not isinstance(value, str) or not SHA_RE.match(value):
        raise SourceError(f"{str(value)[:80]!r} is not a commit SHA")
    return value


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    subject: str


@dataclass(frozen=True)
class PluginChange:
    changed: bool
    before: tuple[str, ...] | None  # the plugins list, None when it could not be read
    after: tuple[str, ...] | None
    files: tuple[str, ...]  # plugin-related files that differ

    def summary(self) -> str:
        if not self.changed:
            return "plugin set unchanged"
        parts = []
        if self.before is not None and self.after is not None and self.before != self.after:
            added = [p for p in self.after if p not in self.before]
            removed = [p for p in self.before if p not in self.after]
            if added:
                parts.append("adds " + ", ".join(added))
            if removed:
                parts.append("removes " + ", ".join(removed))
        others = [f for f in self.files if not f.startswith(SERVICE_FILES) or "(compared as a whole)" in f]
        if others:
            parts.append("changes " + ", ".join(others))
        return "plugin set changed: " + ("; ".join(parts) or "the service file's plugins section differs")


def local_commit(ref: str, path: Path | str = ".") -> CommitInfo | None:
    """What the repository around ``path`` says about ``ref``; None outside a repository or
    when the commit is not there (CI may publish from a shallow or foreign checkout)."""
    if not ref or ref.startswith("-") or not re.match(r"^[\w./@^~{}-]+$", ref):
        return None  # never an option, never anything but a plain revision
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


def local_commits_between(old: str, new: str, path: Path | str = ".", limit: int = 20) -> list[CommitInfo]:
    """Commits in ``new`` that ``old`` lacks, from the repository around ``path`` (CI's checkout);
    empty when there is no repository or either commit is missing from it."""
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return []
    try:
        return [CommitInfo(c.hexsha, c.author.name or "", str(c.summary or ""))
                for c in repo.iter_commits(f"{_sha(old)}..{_sha(new)}", max_count=limit)]
    except (git.GitCommandError, ValueError, SourceError):
        return []
    finally:
        repo.close()


class _ServerlessLoader(yaml.SafeLoader):
    """YAML as Serverless reads it: CloudFormation's short tags (!Ref, !Sub, !GetAtt, …) are values,
    not errors."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_ServerlessLoader.add_multi_constructor("!", _any_tag)


def plugins_of(text: str, name: str = "serverless.yml") -> tuple[str, ...] | None:
    """The ``plugins`` of a serverless.yml, .yaml or .json: the list, or the ``modules:`` form. None when
    it cannot be told (not parseable, a variable like ``${file(…)}``): the caller then reports the file
    as changed rather than guessing."""
    try:
        doc = json.loads(text) if name.endswith(".json") else yaml.load(text, Loader=_ServerlessLoader)
    except (ValueError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict):
        return None if doc else ()
    plugins = doc.get("plugins", [])
    if isinstance(plugins, dict):
        plugins = plugins.get("modules", [])
    if plugins is None:
        return ()
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        return None
    return tuple(plugins)


def parse_serverless(text: str) -> dict | None:
    """A serverless.yml as data (CloudFormation tags kept as plain values); None when it is not YAML."""
    try:
        doc = yaml.load(text, Loader=_ServerlessLoader)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


class SourceRepo:
    """A bare mirror of ROLLBACK_REPO under the data dir; checkouts are worktrees of it."""

    def __init__(self, url: str, mirror_dir: Path, service_dir: str = ".", timeout: float = GIT_TIMEOUT):
        self.url = url
        self.shown_url = without_credentials(url)  # the only form of the URL that goes into a message
        # git is given the URL without its token (so no `ps` and no mirror config shows it) and reads the
        # token from a file only we can read, through git's own credential store
        self.remote_url, userinfo = split_credentials(url)
        self.credentials = mirror_dir.with_name(mirror_dir.name + ".credentials") if userinfo else None
        self.mirror_dir = mirror_dir
        self.service_dir = service_dir
        self.timeout = timeout
        # Two locks: a fetch (network, slow) must never make a running job's checkout (local) wait.
        self._fetch_lock = threading.Lock()  # git does not like two fetches into one mirror at once
        self._tree_lock = threading.Lock()  # worktree add/prune

    def for_dir(self, service_dir: str) -> SourceRepo:
        """The same mirror (and its locks) seen from another service's folder, in a monorepo."""
        if service_dir == self.service_dir:
            return self
        view = copy.copy(self)
        view.service_dir = service_dir
        return view

    def _env(self) -> dict[str, str]:
        # hooks never run (whatever a hooks folder or a config says), and credentials come from our file
        config = [("core.hooksPath", "/dev/null")]
        if self.credentials:
            config += [("credential.helper", ""), ("credential.helper", f"store --file={self.credentials}")]
        env = dict(GIT_ENV, GIT_CONFIG_COUNT=str(len(config)))
        for n, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{n}"], env[f"GIT_CONFIG_VALUE_{n}"] = key, value
        return env

    def _repo(self) -> git.Repo:
        repo = git.Repo(self.mirror_dir)
        repo.git.update_environment(**self._env())
        return repo

    @contextlib.contextmanager
    def _tree(self):
        """Worktree add and prune, one at a time: between this process's threads and every job runner's
        process (a prune during another's add would drop its worktree)."""
        with self._tree_lock:
            self.mirror_dir.parent.mkdir(parents=True, exist_ok=True)
            with open(self.mirror_dir.with_name(self.mirror_dir.name + ".worktrees.lock"), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield

    def _write_credentials(self) -> None:
        if not self.credentials:
            return
        self.credentials.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            # git-credential-store's format: scheme://user:token@host (git asks it by host)
            scheme, rest = self.url.split("://", 1)
            f.write(f"{scheme}://{rest.split('/', 1)[0]}\n")
        os.chmod(self.credentials, 0o600)

    def fetch(self) -> None:
        """Create the mirror, or bring it up to date (stopped after ``timeout`` seconds)."""
        with self._fetch_lock:
            try:
                self._write_credentials()
                if not (self.mirror_dir / "HEAD").exists():
                    # init + fetch rather than clone: gitpython cannot time a clone out, but can a fetch
                    self.mirror_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                    git.Repo.init(self.mirror_dir, bare=True).close()
                    with self._repo() as repo:
                        repo.git.remote("add", "--mirror=fetch", "--", "origin", self.remote_url)
                with self._repo() as repo:
                    # a mirror made before the token moved out of its config: take it out now
                    repo.git.remote("set-url", "--", "origin", self.remote_url)
                    repo.git.fetch("--prune", "--tags", "origin", "+refs/heads/*:refs/heads/*",
                                   kill_after_timeout=self.timeout)
            except git.GitCommandError as exc:
                raise SourceError(
                    f"cannot fetch {self.shown_url}: {_git_says(exc)}. Check ROLLBACK_REPO and access to it"
                ) from exc

    def commit(self, sha: str) -> CommitInfo:
        with self._repo() as repo:
            try:
                c = repo.commit(_sha(sha))
            except (git.BadName, ValueError, git.GitCommandError, SourceError) as exc:
                raise SourceError(
                    f"commit {str(sha)[:12]} is not in {self.shown_url}: it may have been force-pushed away. "
                    "Roll back to another build, or push that commit again"
                ) from exc
            return CommitInfo(c.hexsha, c.author.name or "", str(c.summary or ""))

    def ancestors(self, sha: str, limit: int = 20_000) -> set[str]:
        """``sha`` and the commits before it (up to ``limit``): which builds an app rollback may choose."""
        with self._repo() as repo:
            try:
                out = repo.git.rev_list(f"--max-count={limit}", _sha(sha), "--")
            except (git.GitCommandError, SourceError) as exc:
                raise SourceError(f"commit {str(sha)[:12]} is not in {self.shown_url}") from exc
        return set(out.split())

    def has(self, sha: str) -> bool:
        if not (self.mirror_dir / "HEAD").exists():
            return False
        try:
            self.commit(sha)
            return True
        except SourceError:
            return False

    def commits_between(self, live: str, target: str, limit: int = 50) -> list[CommitInfo]:
        """Commits in ``live`` that ``target`` does not have: what a rollback undoes."""
        with self._repo() as repo:
            try:
                commits = list(repo.iter_commits(f"{_sha(target)}..{_sha(live)}", max_count=limit))
            except (git.GitCommandError, SourceError):
                return []
            return [CommitInfo(c.hexsha, c.author.name or "", str(c.summary or "")) for c in commits]

    def _read(self, repo: git.Repo, sha: str, name: str) -> str | None:
        """A file of the service's folder at ``sha``, or None. Through the repo's one `git cat-file
        --batch` process: a plan reads up to a dozen files, and an app plan that for every service."""
        path = (Path(self.service_dir) / name).as_posix().removeprefix("./")
        try:
            _, kind, _, data = repo.git.get_object_data(f"{_sha(sha)}:{path}")
        except (ValueError, git.GitCommandError, SourceError):  # ValueError: git answered "missing"
            return None
        if kind not in (b"blob", "blob"):  # gitpython gives bytes, though its annotation says str
            return None
        text = data.decode("utf-8", errors="replace")
        return text.removesuffix("\n")  # as `git show` gave it

    def service_files(self, sha: str, names: list[str]) -> dict[str, str]:
        """Files of the service's folder at ``sha`` that exist (serverless.yml, .env…), read from the mirror."""
        with self._repo() as repo:
            found = {name: self._read(repo, sha, name) for name in names}
        return {name: text for name, text in found.items() if text is not None}

    def file_at(self, sha: str, name: str) -> str | None:
        """A file at the repository's root at ``sha`` (the mirror as fetched), or None."""
        if "/" in name or name.startswith(("-", ".")):
            raise SourceError(f"{name!r} is not a plain file name")
        with self._repo() as repo:
            try:
                return repo.git.show(f"{_sha(sha)}:{name}", "--")
            except (git.GitCommandError, SourceError):
                return None

    def default_branch(self) -> str:
        """The remote's default branch, as its HEAD names it (``git ls-remote --symref``). A mirror made by
        init + fetch has a HEAD of its own (``master``), which a pushed branch of that name would take."""
        try:
            with self._repo() as repo:
                out = repo.git.ls_remote("--symref", "--", "origin", "HEAD", kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            raise SourceError(f"cannot ask {self.shown_url} for its default branch: {_git_says(exc)}") from exc
        found = re.match(r"^ref: refs/heads/([A-Za-z0-9._/-]{1,200})\tHEAD$", out.splitlines()[0] if out else "")
        if not found or ".." in found.group(1):
            raise SourceError(f"{self.shown_url} does not say which branch is its default; set ROLLBACK_BRANCH")
        return found.group(1)

    def fetch_root(self, name: str, branch: str = "") -> str | None:
        """Fetch, then a file at the repository's root on ``branch`` (default: the remote's default
        branch, never whatever the mirror's own HEAD names), or None."""
        if "/" in name or name.startswith(("-", ".")):
            raise SourceError(f"{name!r} is not a plain file name")
        self.fetch()
        branch = branch or self.default_branch()
        with self._repo() as repo:
            try:
                return repo.git.show(f"refs/heads/{branch}:{name}", "--")
            except git.GitCommandError:
                return None

    def plugin_change(self, live: str, target: str) -> PluginChange:
        """What changes in the plugin set: package.json and the lockfiles, and the ``plugins`` of the
        service file, whichever Serverless reads (yml, yaml, json; a .js or .ts file, which cannot be read
        without running it, is compared as a whole and the summary says so)."""
        with self._repo() as repo:
            files = [n for n in PLUGIN_FILES if self._read(repo, live, n) != self._read(repo, target, n)]
            config = {sha: next(((n, t) for n in SERVICE_FILES if (t := self._read(repo, sha, n)) is not None),
                                ("", None)) for sha in (live, target)}
        (name_live, text_live), (name_target, text_target) = config[live], config[target]
        before = after = None
        if name_live != name_target or text_live != text_target:
            shown_name = name_target or name_live or "serverless.yml"
            if name_live != name_target:  # the service moved to another file format: compared whole
                files.append(f"{name_live or 'no service file'} → {name_target or 'none'} (compared as a whole)")
            elif shown_name.endswith((".js", ".ts")):  # cannot be read without running it
                files.append(f"{shown_name} (compared as a whole)")
            else:
                before, after = plugins_of(text_live or "", name_live), plugins_of(text_target or "", name_target)
                if before is None or after is None or before != after:
                    files.append(shown_name)
        elif text_live is not None and not name_live.endswith((".js", ".ts")):
            before = after = plugins_of(text_live, name_live)
        return PluginChange(bool(files), before, after, tuple(files))

    def checkout(self, sha: str, dest: Path) -> Path:
        """A clean worktree at ``sha`` in ``dest``; returns the service folder inside it."""
        self.commit(sha)  # a clear error before anything is created
        if dest.exists():
            self.remove_checkout(dest)
        with self._tree(), self._repo() as repo:
            try:
                repo.git.worktree("prune")
                repo.git.worktree("add", "--detach", "--force", "--", str(dest), _sha(sha))
            except git.GitCommandError as exc:
                raise SourceError(f"cannot check out {sha[:12]}: {_git_says(exc)}") from exc
        service = dest / self.service_dir
        if not _inside(service, dest):
            self.remove_checkout(dest)
            raise SourceError(f"commit {sha[:12]}: the service folder {self.service_dir!r} is a link out of the "
                              "checkout; nothing was run. Make it a real folder, or fix ROLLBACK_SERVICE_DIR")
        if not (service / "serverless.yml").is_file() and not any(service.glob("serverless.*")):
            raise SourceError(
                f"commit {sha[:12]} has no serverless.yml in {self.service_dir!r}; check ROLLBACK_SERVICE_DIR"
            )
        return service

    def remove_checkout(self, dest: Path) -> None:
        shutil.rmtree(dest, ignore_errors=True)
        with self._tree(), self._repo() as repo, contextlib.suppress(git.GitCommandError):
            repo.git.worktree("prune")

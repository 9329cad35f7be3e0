"""bubblewrap around the commands of a job. They run the code of the build being rolled back (its npm
install scripts, its Serverless plugins, its ``${file(x.js)}`` resolvers), which nobody reviewed at the
click, so they run where the bot's process, its data folder and its secrets do not exist.

What a sandboxed command sees:

- its own PID namespace: no other process on the host, so no ``/proc/<bot>/environ`` to read;
- only the environment it is handed (the job's, never the bot's own);
- the host's system folders (``/usr``, ``/bin``, ``/lib*``, ``/sbin``, ``/opt``) and the few files of
  ``/etc`` that name lookup, TLS and user lookup need, read-only;
- the folders of the toolchain it runs (the prefix of each PATH entry and of the command itself: Node.js,
  npm, a virtualenv), read-only; never the bot's data folder, its home's secrets (``~/.aws``, ``~/.ssh``…),
  or a folder holding one of them;
- the job's work folder, its only writable path; what ``readonly`` names (the plugin set), read-only;
- a private, empty ``/tmp`` and ``HOME``; the network (a deploy must reach AWS).

It dies with the bot (``--die-with-parent``): a job never runs on unreported after its bot is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.core.config import SandboxMode
from bot.core.errors import UserError

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
ETC = ("ssl", "ca-certificates", "pki", "crypto-policies", "resolv.conf", "hosts", "host.conf", "nsswitch.conf",
       "gai.conf", "passwd", "group", "localtime", "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
       "mime.types")
HOME = "/tmp/home"  # inside the sandbox: private, empty, gone when the command ends
INSTALL = "Debian and Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap"


class SandboxUnavailable(UserError):
    pass


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@dataclass(frozen=True)
class Sandbox:
    """One way of running a job's command: ``command()`` turns its argument list into bubblewrap's."""

    bwrap: str
    hidden: tuple[Path, ...]  # never mounted, nor any folder that holds one (hidden_for)

    def command(self, args: Sequence[str], *, cwd: Path, writable: Path, env: Mapping[str, str],
                readonly: Sequence[Path] = (), mounts: Sequence[tuple[Path, Path]] = (),
                writable_mounts: Sequence[tuple[Path, Path]] = ()) -> list[str]:
        """bubblewrap's arguments for ``args``. ``mounts`` are (host folder, where the command sees it),
        read-only, placed after the writable folder so they cover what is there; ``writable_mounts`` the
        same, writable."""
        out = [self.bwrap, "--unshare-all", "--share-net", "--die-with-parent", "--new-session",
               "--cap-drop", "ALL"]
        for folder in SYSTEM:
            if os.path.islink(folder):  # merged /usr: /bin -> usr/bin
                out += ["--symlink", os.readlink(folder), folder]
            elif os.path.isdir(folder):
                out += ["--ro-bind", folder, folder]
        for name in ETC:
            if os.path.exists(f"/etc/{name}"):
                out += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", HOME]
        for folder in self._toolchain(args, env, readonly):
            out += ["--ro-bind", str(folder), str(folder)]
        out += ["--bind", str(writable), str(writable)]
        for source, target in mounts:
            out += ["--ro-bind", str(source), str(target)]
        for source, target in writable_mounts:
            out += ["--bind", str(source), str(target)]
        # values that are not secret only: bubblewrap's own arguments are visible in the sandbox's /proc/1
        out += ["--setenv", "HOME", HOME, "--setenv", "TMPDIR", "/tmp", "--chdir", str(cwd), "--", *args]
        return out

    def _toolchain(self, args: Sequence[str], env: Mapping[str, str], readonly: Sequence[Path]) -> list[Path]:
        """Read-only folders the command needs beyond the system's: each PATH entry's prefix (``…/bin`` →
        ``…``), the command's own (a symlinked interpreter too), and what the caller names."""
        wanted: list[Path] = []
        entries = [p for p in env.get("PATH", "").split(os.pathsep) if p.startswith("/")]
        first = args[0] if args else ""
        # a relative path (node_modules/.bin/serverless) is the checkout's own, inside the writable folder
        binary = shutil.which(first, path=env.get("PATH")) if first and "/" not in first else (
            first if first.startswith("/") else None)
        for entry in entries + ([os.path.dirname(binary)] if binary else []):
            for real in dict.fromkeys([Path(os.path.abspath(entry)), Path(os.path.realpath(entry))]):
                wanted.append(real.parent if real.name in ("bin", "sbin") else real)
        if binary:
            real = Path(os.path.realpath(binary)).parent
            wanted.append(real.parent if real.name in ("bin", "sbin") else real)
        wanted += [Path(os.path.abspath(p)) for p in readonly]
        chosen: list[Path] = []
        for folder in wanted:
            if not folder.exists() or folder == Path("/") or any(_inside(folder, Path(s)) for s in SYSTEM):
                continue
            if any(_inside(h, folder) or _inside(folder, h) for h in self.hidden):
                continue  # a PATH entry is not worth the bot's secrets: the command may fail, and says so
            if not any(_inside(folder, c) for c in chosen):  # already seen through a folder around it
                chosen = [c for c in chosen if not _inside(c, folder)] + [folder]
        return sorted(chosen, key=lambda p: len(p.parts))  # parents before what lies inside them


def probe(bwrap: str | None) -> str | None:
    """Why bubblewrap cannot run a command here, or None when it can."""
    if not bwrap:
        return f"bubblewrap (bwrap) is not installed ({INSTALL})"
    try:
        done = subprocess.run([bwrap, "--unshare-all", "--share-net", "--die-with-parent", "--ro-bind", "/", "/",
                               "--proc", "/proc", "--dev", "/dev", "--", "true"],
                              capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not be started: {exc}"
    if done.returncode != 0:
        # typically "No permissions to create new namespace": the container forbids user namespaces
        return f"{bwrap} cannot make a sandbox here: {done.stderr.strip()[:300] or f'exit {done.returncode}'}"
    return None


SECRET_HOME = (".aws", ".ssh", ".config", ".docker", ".kube", ".gnupg", ".netrc", ".npmrc", ".git-credentials",
               ".rollback-bot")


def hidden_for(data_dir: Path, home: Path | None = None) -> list[Path]:
    """What no sandbox may mount, nor a folder holding it: the data folder and the secrets of the bot's home
    (so a toolchain under the home, ``~/.pyenv`` say, is mounted, the home itself never)."""
    home = home or Path.home()
    return [data_dir, *(home / name for name in SECRET_HOME)]


def choose(mode: SandboxMode, hidden: Sequence[Path], bwrap: str | None = None) -> tuple[Sandbox | None, str]:
    """The sandbox jobs run in, and what to warn about when there is none. ``required`` without a
    working bubblewrap raises, saying what to install or set."""
    if mode == SandboxMode.OFF:
        return None, "jobs run unsandboxed (ROLLBACK_SANDBOX=off)"
    bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
    why = probe(bwrap)
    if why is None:
        return Sandbox(str(bwrap), tuple(Path(os.path.realpath(h)) for h in hidden)), ""
    if mode == SandboxMode.REQUIRED:
        raise SandboxUnavailable(
            f"ROLLBACK_SANDBOX=required, but {why}. Install bubblewrap (or allow user namespaces), or set "
            "ROLLBACK_SANDBOX=off to run the code of rolled-back builds with the bot's own rights")
    return None, f"jobs run unsandboxed: {why}"

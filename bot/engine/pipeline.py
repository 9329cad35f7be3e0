"""The rollback steps: restore, check out, install plugins, deploy, verify.

Each step emits events (started, output lines, finished with its duration, failed with a reason).
Subprocesses run from argument lists in their own process group, with an explicit environment, so
cancel and the per-step timeout stop everything they started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.adapters.archive import PackageError
from bot.adapters.artifacts import ArtifactError, ArtifactStore
from bot.adapters.plugin_cache import PluginCache, cache_key
from bot.adapters.sandbox import HOME as SANDBOX_HOME
from bot.adapters.sandbox import Sandbox
from bot.adapters.source import LOCKFILES, SourceError, SourceRepo
from bot.adapters.stack import FunctionCheck, PackageInfo, Stack, StackError
from bot.core.events import Event
from bot.core.masking import LINE_LIMIT, cut_line
from bot.core.stage_index import Artifact

STEPS = ("restore", "checkout", "install", "deploy", "verify")
KILL_GRACE = 5.0


class StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"{step}: {reason}")


class Cancelled(StepFailed):
    pass


@dataclass
class Outcome:
    package_dir: Path | None = None
    info: PackageInfo | None = None
    checks: list[FunctionCheck] = field(default_factory=list)
    installed_from_cache: bool = False


def kill_group(pid: int, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period.

    ``proc``, when the leader is our child, is reaped while we wait: an unreaped leader stays a
    zombie, which keeps its group alive, and the wait would last the whole grace period."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_command(
    step: str,
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    timeout: float,
    cancel: threading.Event,
    on_start: Callable[[int], None] = lambda pid: None,
    shown: Sequence[str] = (),
) -> None:
    """Run ``args`` (never through a shell), streaming its output line by line. ``shown`` is the command as
    people know it (without the sandbox around it), for the failure message."""
    try:
        proc = subprocess.Popen(
            list(args), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace", bufsize=1,
        )
    except FileNotFoundError as exc:
        raise StepFailed(step, f"`{args[0]}` was not found; install it or set the command's override") from exc
    on_start(proc.pid)

    def pump() -> None:
        # Lines are read at most LINE_LIMIT characters at a time; the rest of a longer one is counted, never
        # held: a deploy printing gigabytes without a newline costs neither memory nor masking time.
        assert proc.stdout is not None
        head, dropped = None, 0
        for chunk in iter(lambda: proc.stdout.readline(LINE_LIMIT), ""):
            text = chunk.rstrip("\n")
            if head is None:
                head, dropped = text, 0
            else:
                dropped += len(text)
            if chunk.endswith("\n"):
                on_line(cut_line(head, dropped))
                head = None
        if head is not None:
            on_line(cut_line(head, dropped))

    reader = threading.Thread(target=pump, name=f"{step}-output", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    why = None
    while True:
        try:
            proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if cancel.is_set():
            why = "cancelled"
        elif time.monotonic() > deadline:
            why = "timeout"
        if why:
            kill_group(proc.pid, proc)
            proc.wait()
            break
    kill_group(proc.pid, proc)  # children the command left behind in its group
    reader.join(timeout=5)
    if why == "cancelled":
        raise Cancelled(step, "cancelled while running; its processes were stopped")
    if why == "timeout":
        raise StepFailed(step, f"timed out after {timeout:.0f}s; its processes were stopped")
    if proc.returncode != 0:
        raise StepFailed(step, f"`{' '.join(shown or args[:3])}` exited with code {proc.returncode}")


def install_command(service_dir: Path, override: Sequence[str] | None) -> tuple[list[str], Path | None]:
    """The installer that fits the lockfile, and the lockfile it reads."""
    lockfile = next((service_dir / n for n in LOCKFILES if (service_dir / n).is_file()), None)
    if override:
        return list(override), lockfile
    if lockfile is None:
        raise StepFailed(
            "install",
            "package.json has no lockfile at this commit, so the plugin versions are not pinned; "
            "commit a lockfile, or set ROLLBACK_INSTALL_COMMAND",
        )
    if lockfile.name == "yarn.lock":
        return ["yarn", "install", "--frozen-lockfile", "--non-interactive"], lockfile
    if lockfile.name == "pnpm-lock.yaml":
        return ["pnpm", "install", "--frozen-lockfile"], lockfile
    return ["npm", "ci", "--no-audit", "--no-fund"], lockfile


def _fill(template: Sequence[str], **values: str) -> list[str]:
    return [arg.replace("{stage}", values["stage"]).replace("{package}", values["package"]) for arg in template]


class Pipeline:
    def __init__(
        self,
        *,
        artifacts: ArtifactStore,
        source: SourceRepo,
        stage: str,
        target: Artifact,
        workdir: Path,
        plugin_cache: PluginCache,
        env: Mapping[str, str],
        emit: Callable[[Event], None],
        cancel: threading.Event,
        step_timeout: float,
        deploy_template: Sequence[str] | None = None,
        install_template: Sequence[str] | None = None,
        on_process: Callable[[int | None], None] = lambda pid: None,
        stack_factory: Callable[[str, str], Stack] = Stack,
        sandbox: Sandbox | None = None,
        before_step: Callable[[str], None] = lambda step: None,
        copy_plugins: bool = False,
    ):
        self.artifacts = artifacts
        self.source = source
        self.stage = stage
        self.target = target
        self.workdir = workdir
        self.plugin_cache = plugin_cache
        self.env = dict(env)
        self.emit = emit
        self.cancel = cancel
        self.step_timeout = step_timeout
        self.deploy_template = deploy_template
        self.install_template = install_template
        self.on_process = on_process
        self.stack_factory = stack_factory
        self.sandbox = sandbox
        self.before_step = before_step  # the runner renews the job's credentials here when they would run out
        # in the sandbox the cached plugin set is mounted read-only, unless the job is to get its own copy
        self.mount_plugins = sandbox is not None and not copy_plugins
        self.deploy_vars: dict[str, str] = {}  # deploy-time variables: the deploy's environment only, not install's
        # files the operator's own command templates name (a deploy script): trusted, seen read-only
        self.trusted = [Path(a) for a in (*(deploy_template or ()), *(install_template or ()))
                        if a.startswith("/") and Path(a).exists()]
        self.plugins: Path | None = None  # the cached plugin set a sandboxed deploy sees as its node_modules
        self.outcome = Outcome()

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> Outcome:
        for step in STEPS:
            if self.cancel.is_set():
                raise Cancelled(step, "cancelled before it started")
            started = time.monotonic()
            self.emit(Event(step, "started"))
            try:
                self.before_step(step)
                skipped = getattr(self, f"_{step}")()
            except StepFailed as exc:
                self.emit(Event(step, "failed", exc.reason, time.monotonic() - started))
                raise
            except (ArtifactError, SourceError, PackageError, StackError, OSError) as exc:
                self.emit(Event(step, "failed", str(exc), time.monotonic() - started))
                raise StepFailed(step, str(exc)) from exc
            self.emit(Event(step, "skipped" if skipped else "finished", skipped or "", time.monotonic() - started))
        return self.outcome

    def _command(self, step: str, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
                 mounts: Sequence[tuple[Path, Path]] = (), writable_mounts: Sequence[tuple[Path, Path]] = ()) -> None:
        """Run one of the build's commands: in the sandbox, where it sees the work folder and nothing of
        the bot's; ``env`` replaces the job's environment (the installer's has no AWS credentials)."""
        self.emit(Event(step, "output", "$ " + " ".join(args)))
        env = self.env if env is None else env
        argv = list(args)
        if self.sandbox is not None:
            argv = self.sandbox.command(args, cwd=cwd, writable=self.workdir, env=env, readonly=self.trusted,
                                        mounts=mounts, writable_mounts=writable_mounts)
        try:
            run_command(
                step, argv, cwd, env, lambda line: self.emit(Event(step, "output", line)),
                self.step_timeout, self.cancel, on_start=self.on_process, shown=list(args[:3]),
            )
        finally:
            self.on_process(None)

    # -- the steps -------------------------------------------------------------------------------

    def _restore(self) -> None:
        package_dir = self.artifacts.download(self.target, self.workdir / "restore")
        self.outcome.package_dir = package_dir
        self.outcome.info = PackageInfo.read(package_dir, self.stage, self.artifacts.service)
        self.outcome.info.check_stage()
        self.emit(Event("restore", "output", f"{self.target.label()}: {self.target.size} bytes, sha256 verified"))

    def _checkout(self) -> None:
        if not self.source.has(self.target.commit):  # fetched when the plan was made: no network here
            self.source.fetch()
        self.service_dir = self.source.checkout(self.target.commit, self.workdir / "src")
        self.emit(Event("checkout", "output", f"source at {self.target.commit[:12]} in {self.source.service_dir}"))

    def _install(self) -> str | None:
        if not (self.service_dir / "package.json").is_file() and not self.install_template:
            return "no package.json at this commit: no plugins to install"
        command, lockfile = install_command(self.service_dir, self.install_template)
        key = cache_key(self.service_dir, lockfile, command)
        target = self.service_dir / "node_modules"
        source = lockfile.name if lockfile else "override"
        if self.mount_plugins:
            self.plugins = self.plugin_cache.path(key)
            hit = self.plugins is not None
        else:
            hit = self.plugin_cache.restore(key, target)
        if key in self.plugin_cache.dropped:  # it was changed after it was built: said, and installed again
            self.emit(Event("install", "output", self.plugin_cache.dropped.pop(key)))
        if hit:
            self.outcome.installed_from_cache = True
            self.emit(Event("install", "output", f"plugins from the cache (keyed by {source})"
                                                 + (", read-only" if self.plugins else "")))
            return None
        # install scripts are the build's code: they get no AWS credentials at all
        self._command("install", command, self.service_dir,
                      env={k: v for k, v in self.env.items() if not k.startswith("AWS_")})
        if self.mount_plugins and target.is_dir() and not target.is_symlink():
            self.plugins = self.plugin_cache.adopt(key, target)  # and from now on read-only, this job's too
        else:
            self.plugin_cache.store(key, target)
        return None

    def _deploy(self) -> None:
        package = str(self.outcome.package_dir)
        if self.deploy_template:
            args = _fill(self.deploy_template, stage=self.stage, package=package)
        else:
            local = self.service_dir / "node_modules" / ".bin" / "serverless"
            seen = (self.plugins / ".bin" / "serverless") if self.plugins else local  # where it is on our side
            binary = str(local) if seen.exists() else shutil.which("serverless", path=self.env.get("PATH"))
            if not binary:
                raise StepFailed(
                    "deploy",
                    "no Serverless CLI: add serverless (or osls) to the service's package.json, put it on "
                    "PATH, or set ROLLBACK_DEPLOY_COMMAND",
                )
            # --force: Serverless compares with its own newest upload, not with what is live, and
            # would skip rolling forward again as "No changes to deploy" without it.
            args = [binary, "deploy", "--stage", self.stage, "--package", package, "--force"]
        mounts = [(self.plugins, self.service_dir / "node_modules")] if self.plugins else []
        # The Serverless CLI compiles its config-schema validator into ~/.serverless/artifacts (about 2 s) and
        # reuses it when it finds it there: a sandboxed deploy's HOME is new each time, so the folder is kept
        # per AWS account, as the plugin cache is (a job can only ever write what its own account's jobs run).
        kept = []
        if self.sandbox is not None:
            artifacts = self.plugin_cache.root / ".serverless-artifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            kept = [(artifacts, Path(SANDBOX_HOME) / ".serverless" / "artifacts")]
        self._command("deploy", args, self.service_dir, env={**self.env, **self.deploy_vars}, mounts=mounts,
                      writable_mounts=kept)

    def _verify(self) -> str | None:
        info, package_dir = self.outcome.info, self.outcome.package_dir
        assert info is not None and package_dir is not None
        functions = info.functions(package_dir)
        if not functions:
            return "the package has no Lambda functions with code to compare"
        checks = self.stack_factory(info.stack_name, info.region).verify(functions)
        self.outcome.checks = checks
        for c in checks:
            verdict = "verified" if c.ok else f"MISMATCH: Lambda runs {c.actual or 'nothing'}"
            self.emit(Event("verify", "output", f"{c.function}: CodeSha256 {c.expected} {verdict}"))
        bad = [c for c in checks if not c.ok]
        if bad:
            raise StepFailed(
                "verify",
                f"the deploy finished but {len(bad)} of {len(checks)} functions do not run the target's code "
                f"({', '.join(c.function for c in bad)}); check the stack before doing anything else",
            )
        return None

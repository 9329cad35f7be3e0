"""Wall time of a rollback on the test service against moto's server, with the real Serverless CLI.

(a) the manual runbook as plain commands: download the package, unzip, git clone + checkout,
    `npm ci`, `serverless deploy --package --force`;
(b) rollback-bot's whole job (restore, checkout, install, deploy, verify, index update), with a
    cold plugin cache and with a warm one;
(c) the bare `serverless deploy --package --force` alone, in a ready checkout.

Every run deploys the other build (v1, v2, v1, …), so each one really changes the code.
Run: `.venv/bin/python benchmarks/rollback.py [runs]` after ./scripts/test has installed bot/playground/sample_service.
"""

from __future__ import annotations

import os
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
from bot.core.config import load_settings  # noqa: E402
from bot.engine.build import build_engine  # noqa: E402
from bot.playground.aws import MotoServer  # noqa: E402
from tests.support.serverless_fixture import SLS_BIN, build_history, ci_deploy, sls_env  # noqa: E402

BUCKET = "bench-rollback"
SERVICE = "hello-service"


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

    def engine_for(data_dir: Path):
        settings = load_settings({**env, "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE,
                                  "ROLLBACK_REPO": str(history.origin), "ROLLBACK_DATA_DIR": str(data_dir)},
                                 needs=["engine"])
        return build_engine(settings)

    setup = engine_for(root / "setup")
    for name in ("v1", "v2"):
        b = history.builds[name]
        setup.artifacts.publish("prod", b.commit, b.package, build_id=name)
    ci_deploy(history, "v2", env)
    setup.artifacts.mark_deployed("prod", history.builds["v2"].commit, "v2")
    targets = ["v1", "v2"] * (runs * 2)

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
            if result["state"] != "succeeded":
                raise SystemExit(f"job failed: {result['reason']}")

        return job

    # a ready checkout with its plugins, for the bare deploy
    bare_dir = {}
    for name in ("v1", "v2"):
        tree = root / f"bare-{name}"
        run(["git", "clone", "--quiet", str(history.origin), str(tree)], root, env)
        run(["git", "checkout", "--quiet", history.builds[name].commit], tree, env)
        (tree / "node_modules").symlink_to(SLS_BIN.parent.parent)
        bare_dir[name] = tree

    results: dict[str, list[float]] = {"manual": [], "cold": [], "warm": [], "bare": [], "plan": []}
    warm_engine = engine_for(root / "warm")
    approved(warm_engine, "v1")()  # fills the warm engine's plugin cache and mirror
    approved(warm_engine, "v2")()
    it = iter(targets)
    for n in range(runs):
        print(f"run {n + 1}/{runs}…", file=sys.stderr, flush=True)
        t1, t2, t3, t4 = next(it), next(it), next(it), next(it)
        results["manual"].append(timed(lambda: manual(t1, n)))  # noqa: B023 (called at once)
        results["cold"].append(timed(approved(engine_for(root / f"cold-{n}"), t2)))
        warm_engine.jobs.idle()  # the spare node_modules is refilled between rollbacks, off the clock
        results["warm"].append(timed(approved(warm_engine, t3)))
        bare_cmd = [str(SLS_BIN), "deploy", "--stage", "prod", "--package", str(history.builds[t4].package), "--force"]
        results["bare"].append(timed(lambda: run(bare_cmd, bare_dir[t4], env)))  # noqa: B023
    server.stop()
    shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    bare = med["bare"]
    print(f"| procedure ({runs} runs each) | median | vs bare deploy | vs manual |")
    print("| --- | ---: | ---: | ---: |")
    for key, label in (("manual", "(a) manual runbook: download, unzip, clone, npm ci, deploy"),
                       ("cold", "(b) rollback-bot job, cold plugin cache"),
                       ("warm", "(b) rollback-bot job, warm plugin cache"),
                       ("bare", "(c) bare `serverless deploy --package`")):
        print(f"| {label} | {med[key]:.1f} s | {med[key] / bare:.2f}× | {med[key] / med['manual']:.2f}× |")
    print(f"\nPlanning (before approval: fetch, resolve, template diff), median: {med['plan']:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

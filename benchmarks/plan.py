"""Planning a rollback of a 250 MB package: ranged reads of the template only, against downloading
and unzipping the whole package (what planning did before). Against moto's server on this machine.

Run: `.venv/bin/python benchmarks/plan.py [size-in-MB]`.

`benchmarks/plan.py --app [services]` measures the app rollback's plan instead: `/rollback prod <commit>`
on a monorepo of 50 services (3 builds each, every service changed by every commit), from the request
to the card's content: the stage indexes, the git fetch, ancestry, each moving service's own plan and
the export check across all live templates.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bot.core.actor import Actor
from bot.core.config import load_settings  # noqa: E402
from bot.engine.build import build_engine  # noqa: E402
from bot.playground.aws import MotoServer  # noqa: E402
from tests.support.fast_service import build_fast_service, fast_package  # noqa: E402


def main(size_mb: int = 250, runs: int = 7) -> None:
    server = MotoServer()
    env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        service = build_fast_service(root / "service")
        settings = load_settings({**env, "ROLLBACK_BUCKET": "bench-artifacts", "ROLLBACK_SERVICE": "hello-service",
                                  "ROLLBACK_REPO": str(service.origin), "ROLLBACK_DATA_DIR": str(root / "data"),
                                  "PATH": os.environ["PATH"]}, needs=["engine"])
        engine = build_engine(settings)
        engine.artifacts.s3.create_bucket(Bucket="bench-artifacts")
        for name in ("v1", "v2"):
            engine.artifacts.publish("prod", service.commits[name], service.packages[name], build_id=name)
        engine.artifacts.mark_deployed("prod", service.commits["v2"], "v2")
        big = fast_package(root / "big", "v1", extra={"blob.bin": os.urandom(size_mb * 1024 * 1024)})
        started = time.monotonic()
        target = engine.artifacts.publish("prod", service.commits["v1"], big, build_id="big").artifact
        print(f"published a {target.size / 1024**2:.0f} MB package in {time.monotonic() - started:.1f} s")

        engine.plan("prod", "big")  # warm the git mirror and the clients, as a running bot has them
        plans = []
        for _ in range(runs):
            started = time.monotonic()
            engine.plan("prod", "big")
            plans.append(time.monotonic() - started)
        downloads = []
        for n in range(3):
            started = time.monotonic()
            engine.artifacts.download(target, root / f"dl-{n}")
            downloads.append(time.monotonic() - started)
        plan_s, download_s = statistics.median(plans), statistics.median(downloads)
        print(f"plan, ranged reads of the template ({runs} runs): median {plan_s:.3f} s "
              f"(min {min(plans):.3f}, max {max(plans):.3f})")
        print(f"whole download + verify + unzip (3 runs, what planning did before): median {download_s:.2f} s")
        print(f"ratio: {download_s / plan_s:.0f}x faster; target <= 1 s median: {'met' if plan_s <= 1 else 'NOT met'}")
        engine.jobs.shutdown()
    server.stop()


def app_main(n_services: int = 50, runs: int = 5) -> None:
    import git

    from bot.core.policy import Policy
    from bot.engine.build import build_fleet
    from bot.engine.service import RequestLimits, RollbackService
    from tests.support.gitrepo import ServiceRepo

    server = MotoServer()
    env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    names = [f"svc{i:02d}" for i in range(n_services)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = ServiceRepo(root / "work")
        yml = "provider:\n  name: aws\nfunctions:\n  hello:\n    handler: handler.hello\n"
        commits = {v: work.commit(f"all {v}", {f"services/{n}/{f}": (f"service: {n}\n" + yml if f == "serverless.yml"
                                                                    else f"// {n} {v}\n")
                                                for n in names for f in ("serverless.yml", "handler.js")})
                   for v in ("v1", "v2", "v3")}
        origin = root / "origin.git"
        git.Repo.clone_from(work.path, origin, bare=True).close()
        config = root / "rollback.toml"
        # a chain of 5 layers, as services that import each other's exports would be ordered
        config.write_text("".join(f'[services.{n}]\ndir = "services/{n}"\n'
                                  + (f'after = ["{names[i - 10]}"]\n' if i >= 10 else "") for i, n in enumerate(names)))
        settings = load_settings({**env, "ROLLBACK_BUCKET": "bench-artifacts", "ROLLBACK_REPO": str(origin),
                                  "ROLLBACK_CONFIG": str(config), "ROLLBACK_DATA_DIR": str(root / "data"),
                                  "PATH": os.environ["PATH"]}, needs=["engine"])
        fleet = build_fleet(settings)
        fleet.default.artifacts.s3.create_bucket(Bucket="bench-artifacts")
        print(f"publishing {n_services} services × 3 builds…", file=sys.stderr, flush=True)
        for name in names:
            art = fleet.engine(name).artifacts
            for v, commit in commits.items():
                art.publish("prod", commit, fast_package(root / f"pkg-{name}-{v}", f"{name} {v}", service=name),
                            build_id=f"{name}-{v}")
            art.mark_deployed("prod", commits["v3"], f"{name}-v3")
        service = RollbackService(fleet, Policy(), limits=RequestLimits(plans_per_minute=10_000,
                                                                         pending_per_user=10_000))

        def plan() -> float:
            started = time.monotonic()
            pending = service.apps.request("prod", commits["v1"][:10], Actor.in_slack("bench", None))
            took = time.monotonic() - started
            assert len(pending.app.rolling) == n_services and len(pending.app.phases) == 5
            service.withdraw(pending.job_id, Actor.in_slack("bench", None))
            return took

        cold = plan()  # the first after start: git mirror fetched, clients made, indexes read
        warm = [plan() for _ in range(runs)]
        print(f"app plan of {n_services} services (5 phases), first after start: {cold:.2f} s; "
              f"then median of {runs}: {statistics.median(warm):.2f} s (min {min(warm):.2f}, max {max(warm):.2f})")
        fleet.shutdown()
    server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        app_main(int(sys.argv[2]) if len(sys.argv) > 2 else 50)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 250)

"""Planning a rollback of a 250 MB package: ranged reads of the template only, against downloading
and unzipping the whole package (what planning did before). Against moto's server on this machine.

Run: `.venv/bin/python benchmarks/plan.py [size-in-MB]`.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 250)

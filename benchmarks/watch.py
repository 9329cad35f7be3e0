"""What the alarm watch's polling costs S3: one round over 50 services × 3 stages, against moto's server.

Each (service, stage) index is one conditional GET per round, answered 304 when nothing changed; the
list of stages is refreshed every 20 rounds. Run: `.venv/bin/python benchmarks/watch.py [services] [stages]`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.listing import BUCKET, fleet_of, moto_with_bucket  # noqa: E402
from bot.adapters.artifacts import ArtifactStore  # noqa: E402
from bot.core.stage_index import Artifact, StageIndex  # noqa: E402
from bot.engine.service import RollbackService  # noqa: E402
from bot.engine.watch import make_watcher  # noqa: E402


def main(n_services: int = 50, n_stages: int = 3, rounds: int = 40) -> None:
    server, url, s3 = moto_with_bucket()
    names = [f"svc{i:02d}" for i in range(n_services)]
    stages = [f"stage{j}" for j in range(n_stages)]
    for name in names:
        store = ArtifactStore(s3, BUCKET, name)
        for stage in stages:
            index = StageIndex(service=name, stage=stage)
            for i in range(20):
                commit = f"{i:040x}"
                index.artifacts.insert(0, Artifact(commit, str(i), store.artifact_key(stage, commit, str(i)),
                                                   f"{i:064x}", 2, float(i), "Ana Dev", f"change {i}"))
            index.set_live(index.artifacts[0], "ci", 1.0)  # deployed long ago: nothing to watch, only to poll
            s3.put_object(Bucket=BUCKET, Key=store.index_key(stage), Body=index.to_json())
    with tempfile.TemporaryDirectory() as tmp:
        fleet = fleet_of(url, names, tmp)
        watcher = make_watcher(RollbackService(fleet, fleet.settings.policy))
        calls: list[str] = []
        fleet.default.artifacts.s3.meta.events.register(
            "before-send.s3", lambda request, **kw: calls.append("list" if "list-type=2" in request.url else "index"))
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            watcher.poll()
            times.append(time.perf_counter() - t0)
        fleet.shutdown()
    server.stop()
    per_round = len(calls) / rounds
    per_minute = per_round * 60 / 15
    print(f"| services × stages | S3 requests a round (mean of {rounds}) | a minute, every 15 s | one round (median) |")
    print("| --- | ---: | ---: | ---: |")
    median = statistics.median(times) * 1000
    print(f"| {n_services} × {n_stages} | {per_round:.1f} | {per_minute:.0f} | {median:.0f} ms |")
    print(f"({calls.count('index')} index reads and {calls.count('list')} stage listings over {rounds} rounds)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

"""The stage lease in S3 (bot/adapters/lease.py): what it costs a job, and how long a dead holder keeps a
stage. Against moto's server over HTTP (bot/playground/aws.py), the real LeaseStore and LeaseKeeper.

- cost: S3 requests a job makes for its lease (take, renewals, let go), counted with botocore's event
  hooks, for a job of a given length; and the median latency of a take and of a let-go.
- plan: S3 requests a plan card's ticket costs (bot/adapters/plan_board.py: posted, its card's place
  recorded, closed once at the approval), and the median latency of the close, the step a click waits for.
- death: a holder takes the lease and dies without letting go; a second bot asks every 0.5 s, as a
  person retrying would. Reported: the median time from the death to the second bot's job starting.

Run: `.venv/bin/python benchmarks/lease.py [RUNS]` (default 5).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bot.adapters.lease import LeaseStore  # noqa: E402
from bot.adapters.plan_board import PlanBoard  # noqa: E402
from bot.adapters.store import StageBusy  # noqa: E402
from bot.core.plan_ticket import PlanTicket, TicketState  # noqa: E402
from bot.engine.lease_keeper import LeaseKeeper  # noqa: E402
from bot.playground.aws import MotoServer  # noqa: E402

BUCKET = "bench-leases"


def client(url: str, counter: list[str] | None = None):
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                      aws_secret_access_key="bench", config=Config(retries={"max_attempts": 2}))
    if counter is not None:
        s3.meta.events.register("before-call.s3.*", lambda model, **kw: counter.append(model.name))
    return s3


def cost(url: str, ttl: float, job_seconds: float) -> list[str]:
    calls: list[str] = []
    store = LeaseStore(client(url, calls), BUCKET, "p/", "svc", ttl=ttl)
    keeper = LeaseKeeper(store, on_lost=lambda job, why: print(f"lost: {why}"))
    keeper.take("prod", 1, "U-BO", "U-ANA", "bench", 1)
    time.sleep(job_seconds)
    keeper.drop(1)
    keeper.stop()
    return calls


def latency(url: str, runs: int) -> tuple[float, float]:
    store = LeaseStore(client(url), BUCKET, "p/", "svc", ttl=60)
    takes, drops = [], []
    for i in range(runs * 4):
        t = time.perf_counter()
        held = store.acquire("lat", i, "U-BO", "U-ANA", "bench", 1)
        takes.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.release(held)
        drops.append(time.perf_counter() - t)
    return statistics.median(takes), statistics.median(drops)


def plan(url: str, runs: int) -> tuple[list[str], float]:
    calls: list[str] = []
    board = PlanBoard(client(url, calls), BUCKET, "p/", "svc")
    closes = []
    for i in range(runs * 4):
        calls.clear()
        uid = f"{i:032x}"
        board.post(PlanTicket(uid=uid, service="svc", stage="prod", state=TicketState.PENDING, target_commit="a" * 40,
                              target_build="b1", live_commit="b" * 40, live_build="b2", requested_by="U-ANA",
                              origin="slack", channel="", message_ts="", plan_json='{"ref": "previous"}',
                              created=time.time(), expires=time.time() + 900))
        board.change("prod", uid, lambda t: replace(t, channel="C1", message_ts="1.2"))
        t = time.perf_counter()
        board.close("prod", uid, TicketState.PENDING, TicketState.APPROVED, "U-BO", "bench")
        closes.append(time.perf_counter() - t)
    return list(calls), statistics.median(closes)


def death(url: str, ttl: float, stage: str) -> float:
    dead = LeaseStore(client(url), BUCKET, "p/", "svc", ttl=ttl)
    dead.acquire(stage, 1, "U-BO", "U-ANA", "bench", 1)
    died = time.monotonic()  # it never renews nor lets go from here on
    other = LeaseStore(client(url), BUCKET, "p/", "svc", ttl=ttl)
    while True:
        try:
            other.acquire(stage, 2, "U-CY", "U-CY", "bench", 2)
            return time.monotonic() - died
        except StageBusy:
            time.sleep(0.5)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    server = MotoServer()
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    ttl, job = 3.0, 10.0
    calls = cost(server.url, ttl, job)
    print(f"cost: a {job:.0f} s job with a {ttl:.0f} s lease made {len(calls)} S3 requests "
          f"({', '.join(f'{calls.count(c)} {c}' for c in dict.fromkeys(calls))}); "
          f"with the default 120 s lease a job makes 2 + one PutObject per 40 s it runs")
    take, drop = latency(server.url, runs)
    print(f"latency: take median {take * 1000:.1f} ms, let go median {drop * 1000:.1f} ms ({runs * 4} each)")
    calls, close = plan(server.url, runs)
    print(f"plan: a plan card's ticket made {len(calls)} S3 requests "
          f"({', '.join(f'{calls.count(c)} {c}' for c in dict.fromkeys(calls))}); the approval's close, median "
          f"{close * 1000:.1f} ms ({runs * 4} plans)")
    waits = []
    for i in range(runs):
        threading.Event().wait(0.2)
        waits.append(death(server.url, ttl, f"death-{i}"))
    print(f"death: with a {ttl:.0f} s lease, the next job started a median {statistics.median(waits):.2f} s after "
          f"its holder died (min {min(waits):.2f}, max {max(waits):.2f}, {runs} runs); at most "
          "ROLLBACK_LEASE_SECONDS plus the retry interval")
    server.stop()


if __name__ == "__main__":
    main()

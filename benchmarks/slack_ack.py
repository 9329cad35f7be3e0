"""How fast the HTTP server answers Slack, and how many Web API calls a rollback makes.

1. 50 concurrent signed `/rollback prod` requests against the real app served by waitress, with a
   10,000-build index in moto's S3: p50/p99 time to the HTTP answer (Slack allows 3,000 ms).
2. A rollback job whose deploy prints 20 lines a second for 60 s: Slack API calls per job minute.

The bot runs as `rollback-bot serve` in its own process; moto, the Slack stand-in and the load
generator share this one. Run: `.venv/bin/python benchmarks/slack_ack.py` (no node needed).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import git

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bot.config import load_settings  # noqa: E402
from bot.engine import build_engine  # noqa: E402
from bot.stage_index import Artifact, StageIndex  # noqa: E402
from tests.conftest import make_package  # noqa: E402
from tests.gitrepo import ServiceRepo  # noqa: E402
from tests.moto_fixture import MotoServer  # noqa: E402
from tests.slack_standin import SlackStandIn, SlackUser  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

SECRET = "bench-secret"
BUILDS = 10_000


def main() -> None:
    moto = MotoServer()
    os.environ.update({"AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": "b", "AWS_SECRET_ACCESS_KEY": "bsecret1",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    root = Path(tempfile.mkdtemp(prefix="slack-bench-"))
    repo = ServiceRepo(root / "work")
    old = repo.commit("v1", {"serverless.yml": "service: hello-service\n"})
    new = repo.commit("v2", {"handler.js": "// v2\n"})
    origin = root / "origin.git"
    git.Repo.clone_from(repo.path, origin, bare=True).close()
    standin = SlackStandIn()
    boto3.client("s3").create_bucket(Bucket="bench-slack")
    port = _free_port()
    env = {
        **os.environ, "ROLLBACK_BUCKET": "bench-slack", "ROLLBACK_SERVICE": "hello-service",
        "ROLLBACK_REPO": str(origin), "ROLLBACK_DATA_DIR": str(root / "data"), "SLACK_BOT_TOKEN": "xoxb-bench",
        "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": standin.api_url, "PORT": str(port),
        "ROLLBACK_DEPLOY_COMMAND": f"{sys.executable} -c \"import time; [(print('deploy line %d' % i, flush=True), "
                                   "time.sleep(0.05)) for i in range(1200)]\"",
    }
    settings = load_settings(env, needs=["engine", "slack"])
    engine = build_engine(settings)

    # a 10,000-build index, plus two real packages for the rollback
    index = StageIndex(service="hello-service", stage="prod")
    for i in range(BUILDS - 2):
        index.artifacts.append(Artifact(f"{i:040x}", str(i), "k", "0" * 64, 1, float(i), "Ana", f"change {i}"))
    boto3.client("s3").put_object(Bucket="bench-slack", Key=engine.artifacts.index_key("prod"), Body=index.to_json())
    for sha, name in ((old, "v1"), (new, "v2")):
        engine.artifacts.publish("prod", sha, make_package(root / name, name), build_id=name)
    engine.artifacts.mark_deployed("prod", new, "v2")

    # The bot in its own process, as in production: `rollback-bot serve` behind waitress.
    bot = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    wait_for(lambda: _healthy(port), 60)
    url = f"http://127.0.0.1:{port}/slack/events"
    users = [SlackUser(standin, url, SECRET, f"U{i}") for i in range(50)]
    users[0].command("prod")  # warm: auth, index cache
    time.sleep(1)
    alone = []
    for u in users:
        t0 = time.perf_counter()
        u.command("prod")
        alone.append(time.perf_counter() - t0)
        time.sleep(0.05)

    # The burst comes from another process, as Slack's requests come from elsewhere.
    rounds = 5
    proc = subprocess.run([sys.executable, __file__, "--burst", url, standin.base, str(len(users)), str(rounds)],
                          capture_output=True, text=True, timeout=600)
    times = json.loads(proc.stdout)
    times.sort()
    p50 = statistics.median(times) * 1000
    p99 = times[int(len(times) * 0.99) - 1] * 1000

    # a rollback of about a minute, watched from Slack
    before = len(standin.calls)
    users[1].command("prod v1")
    card = wait_for(lambda: next((m for m in standin.messages["C-OPS"] if m["blocks"] and
                               m["blocks"][-1].get("block_id") == "plan_actions"), None))
    calls_at_approval = len(standin.calls)
    users[2].click(card, "approve")
    job = wait_for(lambda: next((j for j in engine.store.jobs() if j["state"] not in ("pending", "running",
                                                                                  "approving")), None), 300)
    wait_for(lambda: standin.message("C-OPS", card["ts"])["blocks"][0]["text"]["text"].startswith(("✅", "❌")))
    time.sleep(1)
    job_calls = len(standin.calls) - calls_at_approval
    minutes = (job["finished"] - job["started"]) / 60
    bot.terminate()
    bot.wait()
    standin.stop()
    moto.stop()

    print("| measure | value | target |")
    print("| --- | ---: | ---: |")
    print(f"| ack of `/rollback prod`, one request at a time, p50 | {statistics.median(alone) * 1000:.1f} ms | |")
    print(f"| ack of `/rollback prod`, {BUILDS:,}-build index, 50 concurrent × {rounds} rounds, p50 | {p50:.0f} ms | |")
    print(f"| same, p99 | {p99:.0f} ms | < 100 ms |")
    print(f"| Slack API calls during a {minutes * 60:.0f} s rollback ({job_calls} calls) | "
          f"{job_calls / minutes:.0f} per job minute | ≤ 40 |")
    print(f"\n(plan request and card: {calls_at_approval - before} calls before approval)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def burst(url: str, standin_base: str, n: int, rounds: int) -> None:
    """Fire ``rounds`` bursts of ``n`` simultaneous signed `/rollback prod`; print the times as JSON."""

    class Replies:  # response_urls point at the parent's Slack stand-in
        def __init__(self):
            self.n = 0

        def response_url(self):
            self.n += 1
            return f"{standin_base}/response/burst-{self.n}"

    replies = Replies()
    users = [SlackUser(replies, url, SECRET, f"U{i}") for i in range(n)]
    times: list[float] = []
    lock = threading.Lock()
    for _ in range(rounds):
        barrier = threading.Barrier(n)

        def fire(user: SlackUser, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            status = user.command("prod")
            took = time.perf_counter() - t0
            assert status == 200, status
            with lock:
                times.append(took)

        threads = [threading.Thread(target=fire, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2)  # let the listings of this round finish before the next burst
    print(json.dumps(times))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--burst":
        burst(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()

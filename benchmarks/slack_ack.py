"""How fast the HTTP server answers Slack, and how many Web API calls a rollback makes.

1. 50 concurrent signed `/rollback prod` requests against the real app served by waitress, with a
   10,000-build index in moto's S3: p50/p99 time to the HTTP answer (Slack allows 3,000 ms).
2. A rollback job whose deploy prints 20 lines a second for 60 s: Slack API calls per job minute.

The bot runs as `rollback-bot serve` in its own process; moto, the Slack stand-in and the load
generator share this one. Run: `.venv/bin/python benchmarks/slack_ack.py` (no node needed).

The HTTP answer comes from Bolt's own WSGI adapter: each listener calls `ack()` first and hands the
work to the bot's pool.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from slack_sdk.signature import SignatureVerifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECRET = "bench-secret"
BUILDS = 10_000


def main() -> None:
    # Imported here, not at the top: the burst process must stay small, or its own garbage collector
    # pauses it for a third of a second and that pause is counted as the bot's.
    import boto3
    import git

    from bot.core.config import load_settings
    from bot.core.stage_index import Artifact, StageIndex
    from bot.engine.build import build_engine
    from bot.playground.aws import MotoServer
    from bot.playground.slack import SlackStandIn, SlackUser
    from tests.conftest import make_package
    from tests.support.gitrepo import ServiceRepo
    from tests.support.waiting import wait_for

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
        key = engine.artifacts.artifact_key("prod", f"{i:040x}", str(i))  # valid entries: the index is checked
        index.artifacts.append(Artifact(f"{i:040x}", str(i), key, "0" * 64, 1, float(i), "Ana", f"change {i}"))
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
    rounds = 10
    replied = len(standin.responses)
    proc = subprocess.run([sys.executable, __file__, "--burst", url, standin.base, str(len(users)), str(rounds)],
                          capture_output=True, text=True, timeout=600)
    out = json.loads(proc.stdout)
    times, starts = out["times"], out["starts"]
    # acknowledging first must not lose the answer: every command of the burst gets its listing
    wait_for(lambda: len(standin.responses) - replied >= rounds * len(users), 60, "a listing for every command")
    assert all(r.get("text") == "Builds of prod" for r in standin.responses[replied:]), "a command got no listing"
    arrived = [m["at"] for m in standin.response_meta[replied:]]
    last_reply = []
    for r in range(rounds):
        each = sorted(times[r * len(users):(r + 1) * len(users)])
        end = starts[r + 1] if r + 1 < rounds else float("inf")
        last_reply.append(max(t for t in arrived if starts[r] <= t < end) - starts[r])
        print(f"round {r + 1}: ack p50 {statistics.median(each) * 1000:.0f} ms, max {each[-1] * 1000:.0f} ms; "
              f"last listing after {last_reply[-1] * 1000:.0f} ms", file=sys.stderr)
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
    job = wait_for(lambda: next((j for j in engine.store.jobs() if j.state not in ("pending", "running",
                                                                                  "approving")), None), 300)
    wait_for(lambda: standin.message("C-OPS", card["ts"])["blocks"][0]["text"]["text"].startswith(("✅", "❌")))
    time.sleep(1)
    job_calls = len(standin.calls) - calls_at_approval
    minutes = (job.finished - job.started) / 60
    bot.terminate()
    bot.wait()
    standin.stop()
    moto.stop()

    print("| measure | value | target |")
    print("| --- | ---: | ---: |")
    print(f"| ack of `/rollback prod`, one request at a time, p50 | {statistics.median(alone) * 1000:.1f} ms | |")
    print(f"| ack of `/rollback prod`, {BUILDS:,}-build index, 50 concurrent × {rounds} rounds, p50 | {p50:.0f} ms | |")
    print(f"| same, p99 | {p99:.0f} ms | < 100 ms |")
    print(f"| all 50 listings of a burst delivered after (median of rounds) | "
          f"{statistics.median(last_reply) * 1000:.0f} ms | |")
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
    """Fire ``rounds`` bursts of ``n`` simultaneous signed `/rollback prod`; print the times as JSON.

    One asyncio loop sends the requests, signed in advance, so the load generator's own threads do
    not compete with each other and what is timed is the server's answer.
    """
    parts = urllib.parse.urlsplit(url)
    verifier = SignatureVerifier(SECRET)

    def signed(i: int, r: int) -> bytes:
        body = urllib.parse.urlencode({
            "token": "unused", "team_id": "T1", "team_domain": "test", "channel_id": "C-OPS",
            "channel_name": "ops", "user_id": f"U{i}", "user_name": f"u{i}", "command": "/rollback",
            "text": "prod", "api_app_id": "A1", "response_url": f"{standin_base}/response/burst-{r}-{i}",
            "trigger_id": f"trig-{r}-{i}"}).encode()
        ts = str(int(time.time()))
        head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: "
                f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\nX-Slack-Request-Timestamp: "
                f"{ts}\r\nX-Slack-Signature: {verifier.generate_signature(timestamp=ts, body=body)}\r\n"
                "Connection: close\r\n\r\n")
        return head.encode() + body

    async def one(request: bytes) -> float:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(request)
        await writer.drain()
        status = await reader.readline()
        took = time.perf_counter() - t0
        assert b" 200 " in status, status
        await reader.read()
        writer.close()
        return took

    async def all_rounds() -> dict[str, list[float]]:
        times: list[float] = []
        starts: list[float] = []
        for r in range(rounds):
            requests = [signed(i, r) for i in range(n)]
            starts.append(time.time())
            times += await asyncio.gather(*(one(req) for req in requests))
            await asyncio.sleep(2)  # let the listings of this round finish before the next burst
        return {"times": times, "starts": starts}

    gc.disable()  # a load generator must not pause in the middle of a burst
    print(json.dumps(asyncio.run(all_rounds())))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--burst":
        burst(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()

"""Listing a stage's builds: through index.json (warm, revalidated) vs scanning the bucket.

The scan is what a person gets from browsing the bucket: ListObjectsV2 pages, then a HEAD per
object for its metadata (commit, build id, sha256). Run: `.venv/bin/python benchmarks/listing.py`
(optionally with counts, e.g. `benchmarks/listing.py 100 1000`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bot.adapters.artifacts import ArtifactStore  # noqa: E402
from bot.core.actor import Actor
from bot.core.stage_index import Artifact, StageIndex  # noqa: E402

BUCKET = "bench-artifacts"
SERVICE = "svc"


def client(url: str):
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
        aws_secret_access_key="bench", config=Config(max_pool_connections=4),
    )


def counted(s3) -> list:
    calls: list = []
    s3.meta.events.register("before-send.s3", lambda **kw: calls.append(1))
    return calls


def populate(s3, store: ArtifactStore, stage: str, n: int) -> None:
    index = StageIndex(service=SERVICE, stage=stage)
    for i in range(n):
        commit = f"{i:040x}"
        key = store.artifact_key(stage, commit, str(i))
        sha = f"{i:064x}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"PK",
                      Metadata={"sha256": sha, "size": "2", "commit": commit, "build-id": str(i)})
        index.artifacts.insert(0, Artifact(commit, str(i), key, sha, 2, float(i), "Ana Dev", f"change {i}"))
    s3.put_object(Bucket=BUCKET, Key=store.index_key(stage), Body=index.to_json())


def scan(s3, prefix: str) -> list[dict]:
    builds = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("package.zip"):
                builds.append(s3.head_object(Bucket=BUCKET, Key=obj["Key"])["Metadata"])
    return builds


def measure(fn, runs: int) -> tuple[float, int]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), runs


def main(counts: list[int]) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    s3 = client(url)
    s3.create_bucket(Bucket=BUCKET)
    rows = []
    for n in counts:
        stage = f"s{n}"
        writer = ArtifactStore(s3, BUCKET, SERVICE)
        print(f"populating {n} builds…", file=sys.stderr, flush=True)
        populate(s3, writer, stage, n)

        reader_s3 = client(url)
        reader = ArtifactStore(reader_s3, BUCKET, SERVICE)
        assert len(reader.read_index(stage).artifacts) == n  # cold read fills the cache
        calls = counted(reader_s3)
        index_median, runs = measure(lambda r=reader, s=stage: r.read_index(s), 21)
        index_requests = len(calls) / runs

        scan_s3 = client(url)
        calls = counted(scan_s3)
        assert len(scan(scan_s3, writer.stage_prefix(stage))) == n
        scan_requests = len(calls)
        prefix = writer.stage_prefix(stage)
        scan_median, _ = measure(lambda c=scan_s3, p=prefix: scan(c, p), 3 if n >= 10_000 else 5)
        rows.append((n, index_median, index_requests, scan_median, scan_requests))
    server.stop()

    print("| builds | warm index listing (median) | requests | bucket scan (median) | requests | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, im, ir, sm, sr in rows:
        print(f"| {n:,} | {im * 1000:.1f} ms | {ir:g} | {sm * 1000:,.0f} ms | {sr:,} | {sm / im:,.0f}× |")


def moto_with_bucket() -> tuple[ThreadedMotoServer, str, object]:
    """moto's server on a free port with the benchmark bucket: the server, its URL, an S3 client."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    s3 = client(url)
    s3.create_bucket(Bucket=BUCKET)
    return server, url, s3


def fleet_of(url: str, names: list[str], tmp: str, stages: str = ""):
    """The real fleet of a bot whose catalog names these services (no repository is read); ``stages``
    is the config's [stages.*] text (the policy)."""
    import os

    from bot.core.config import load_settings
    from bot.engine.build import build_fleet

    config = Path(tmp) / "rollback.toml"
    config.write_text("".join(f'[services.{n}]\ndir = "services/{n}"\n' for n in names) + stages)
    env = {"ROLLBACK_BUCKET": BUCKET, "ROLLBACK_REPO": tmp, "ROLLBACK_CONFIG": str(config),
           "ROLLBACK_DATA_DIR": tmp, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "PATH": os.environ["PATH"]}
    return build_fleet(load_settings(env, needs=["engine"]))


def services(n_services: int, n_builds: int, runs: int = 11) -> None:
    """`/rollback prod` on a bot of ``n_services`` services: the real RollbackService over a Fleet built
    from a catalog, each service's index holding ``n_builds`` builds, read concurrently."""
    import tempfile

    from bot.engine.service import RollbackService

    server, url, s3 = moto_with_bucket()
    names = [f"svc{i:02d}" for i in range(n_services)]
    print(f"populating {n_services} indexes of {n_builds} builds…", file=sys.stderr, flush=True)
    for name in names:
        store = ArtifactStore(s3, BUCKET, name)
        index = StageIndex(service=name, stage="prod")
        for i in range(n_builds):
            commit = f"{i:040x}"
            index.artifacts.insert(0, Artifact(commit, str(i), store.artifact_key("prod", commit, str(i)),
                                               f"{i:064x}", 2, float(i), "Ana Dev", f"change {i}"))
        index.set_live(index.artifacts[0], "ci", float(n_builds))
        s3.put_object(Bucket=BUCKET, Key=store.index_key("prod"), Body=index.to_json())
    with tempfile.TemporaryDirectory() as tmp:
        fleet = fleet_of(url, names, tmp, '[stages.prod]\nregion = "us-east-1"\n')
        service = RollbackService(fleet, fleet.settings.policy)
        calls: list = []
        fleet.default.artifacts.s3.meta.events.register("before-send.s3", lambda **kw: calls.append(1))
        t0 = time.perf_counter()
        rows = service.stage_overview("prod", Actor.in_slack("U-BENCH", None))
        cold, cold_requests = time.perf_counter() - t0, len(calls)
        assert len(rows) == n_services and all(len(i.artifacts) == n_builds for i, _ in rows)
        calls.clear()
        warm, _ = measure(lambda: service.stage_overview("prod", Actor.in_slack("U-BENCH", None)), runs)
        warm_requests = len(calls) / runs
    server.stop()
    print("| services × builds | first `/rollback prod` (cold) | requests | warm (median) | requests |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| {n_services} × {n_builds:,} | {cold * 1000:,.0f} ms | {cold_requests} | {warm * 1000:,.0f} ms | "
          f"{warm_requests:g} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--services"]:  # benchmarks/listing.py --services 50 1000
        services(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1_000)
    else:
        main([int(a) for a in sys.argv[1:]] or [100, 1_000, 10_000])

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


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1_000, 10_000])

"""The S3 artifact store: publish a package, keep the per-stage index, find and fetch a build.

Layout (DESIGN.md)::

    s3://BUCKET/PREFIX<service>/<stage>/index.json
    s3://BUCKET/PREFIX<service>/<stage>/<commit>/<build-id>/package.zip

The index is the only thing readers need. Writers change it with a conditional PUT (IfMatch on the
ETag they read, IfNoneMatch="*" when creating) and start over on 412, so concurrent publishers from
several CI machines all land.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from bot.adapters import aws_clients
from bot.adapters.archive import CHUNK, Limits, PackageError, check_limits, read_members, safe_extract, zip_package
from bot.core.errors import UserError
from bot.core.stage_index import (
    BUILD_RE,
    COMMIT_RE,
    MAX_PACKAGE_BYTES,
    Artifact,
    IndexFormatError,
    LiveRecord,
    Mark,
    StageIndex,
)

T = TypeVar("T")
STAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
MAX_INDEX_BYTES = 64 * 1024**2  # about 200,000 builds; a larger index.json is refused, not read


class _RangeReader(io.RawIOBase):
    """A stored package as a seekable file, read with ranged GETs; the first answer's metadata is
    checked against the index like a full download's."""

    WINDOW = 256 * 1024

    def __init__(self, store: ArtifactStore, artifact: Artifact):
        self.store, self.artifact = store, artifact
        self.pos = 0
        self.checked = False
        self.windows: list[tuple[int, bytes]] = []  # (offset, bytes) already fetched

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.artifact.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.artifact.size - self.pos)
        if want <= 0:
            return 0
        for start, data in self.windows:
            if start <= self.pos < start + len(data):
                chunk = data[self.pos - start: self.pos - start + want]
                buffer[: len(chunk)] = chunk
                self.pos += len(chunk)
                return len(chunk)
        # A miss fetches a window around what is asked: the first one is the archive's tail (the
        # directory and serverless-state.json), the next the head (the template): two requests.
        start = self.pos if self.windows else max(0, self.artifact.size - self.WINDOW)
        end = min(self.artifact.size, max(start + self.WINDOW, self.pos + want)) - 1
        data = self._get(start, end)
        if len(data) != end - start + 1:
            raise ChecksumError(f"{self.artifact.label()}: S3 returned {len(data)} bytes for a range of "
                                f"{end - start + 1}; the object is not the one the index describes")
        self.windows.append((start, data))
        return self.readinto(buffer)

    def _get(self, start: int, end: int) -> bytes:
        where = f"reading {self.store.where(self.artifact.key)}"
        resp = self.store._call(where, self.store.s3.get_object, Bucket=self.store.bucket,
                                Key=self.artifact.key, Range=f"bytes={start}-{end}")
        if not self.checked:
            self.store._check_object(self.artifact, resp)
            total = str(resp.get("ContentRange", "")).rpartition("/")[2]
            if total.isdigit() and int(total) != self.artifact.size:
                raise ChecksumError(f"{self.artifact.label()} is {total} bytes in S3, not the {self.artifact.size} "
                                    "the index says. Republish that build from CI, or roll back to another build")
            self.checked = True
        return resp["Body"].read(end - start + 1)


class ArtifactError(UserError):
    """Something the person running the command can act on; the message says what to do."""


class ChecksumError(ArtifactError):
    """A downloaded package is not the one that was published."""


@dataclass
class PublishResult:
    artifact: Artifact
    uploaded: bool  # False when the same build was already there
    went_live: bool


@dataclass
class PruneResult:
    removed: list[Artifact] = field(default_factory=list)
    kept: list[Artifact] = field(default_factory=list)
    protected: dict[tuple[str, str], str] = field(default_factory=dict)  # ident -> why it stays
    failed_deletes: list[str] = field(default_factory=list)


def receive_package(chunks: Iterable[bytes], artifact: Artifact, dest: Path, limits: Limits) -> Path:
    """Write a package's bytes into ``dest``, check them against the index (size, sha256) and unzip them;
    nothing is unzipped unless both match. Returns the folder holding the package."""
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / "package.zip.part"
    h = hashlib.sha256()
    size = 0
    try:
        with open(part, "wb") as out:
            for chunk in chunks:
                h.update(chunk)
                size += len(chunk)
                if size > artifact.size:
                    break  # more than the index promises: stop reading, it fails below
                out.write(chunk)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if size != artifact.size or h.hexdigest() != artifact.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{artifact.label()} is corrupt in S3: expected {artifact.size} bytes with sha256 "
            f"{artifact.sha256[:12]}…, got {size} bytes with sha256 {h.hexdigest()[:12]}…. Nothing was "
            "unpacked. Republish that build from CI, or roll back to another build"
        )
    zip_path = dest / "package.zip"
    part.rename(zip_path)
    package_dir = dest / "package"
    try:
        safe_extract(zip_path, package_dir, limits)
    except PackageError as exc:
        raise ArtifactError(f"{artifact.label()}: {exc}") from exc
    return package_dir


def make_s3_client(max_attempts: int = 5, env: Mapping[str, str] | None = None):
    """An S3 client that retries throttling and 5xx answers with backoff.

    Endpoint and credentials come from ``env`` (the settings' AWS variables, AWS_ENDPOINT_URL included),
    or botocore's usual chain where it names none.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=16,  # one client serves every service's index, read 16 at a time
    )
    return aws_clients.client("s3", config=config, env=env)


def validate_stage(stage: str) -> str:
    if not STAGE_RE.match(stage or ""):
        raise ArtifactError(f"stage {stage!r} is not a valid stage name (letters, digits, '-' or '_')")
    return stage


class ArtifactStore:
    def __init__(
        self,
        s3,
        bucket: str,
        service: str,
        prefix: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_index_attempts: int = 30,
        limits: Limits | None = None,
    ):
        self.limits = limits or Limits()
        self.s3 = s3
        self.bucket = bucket
        self.service = service
        self.prefix = prefix
        self.clock = clock
        self.sleep = sleep
        self.max_index_attempts = max_index_attempts
        self._cache: dict[str, tuple[str, bytes, StageIndex]] = {}
        self._cache_lock = threading.Lock()
        self._flights: dict[str, Future] = {}

    # -- keys ------------------------------------------------------------------------------------

    def stage_prefix(self, stage: str) -> str:
        return f"{self.prefix}{self.service}/{validate_stage(stage)}/"

    def index_key(self, stage: str) -> str:
        return self.stage_prefix(stage) + "index.json"

    def artifact_key(self, stage: str, commit: str, build_id: str) -> str:
        return f"{self.stage_prefix(stage)}{commit}/{build_id}/package.zip"

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- errors ----------------------------------------------------------------------------------

    def _explain(self, exc: Exception, doing: str) -> ArtifactError:
        """Turn an S3/botocore failure into a message a person can act on."""
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ArtifactError(
                f"no AWS credentials while {doing}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE, or an instance role)"
            )
        if isinstance(exc, EndpointConnectionError):
            return ArtifactError(f"cannot reach S3 while {doing} ({exc}); check AWS_ENDPOINT_URL and the network")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return ArtifactError(
                    f"bucket {self.bucket!r} does not exist ({doing}); create it or fix ROLLBACK_BUCKET"
                )
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return ArtifactError(
                    f"S3 refused access to bucket {self.bucket!r} while {doing} ({code}); "
                    "check the credentials and the bucket policy"
                )
            if status >= 500:
                attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
                return ArtifactError(
                    f"S3 kept failing while {doing}: {status} {code} after {attempts} attempts. "
                    "Nothing was changed; run the command again when S3 recovers"
                )
            return ArtifactError(f"S3 error while {doing}: {code or status} {err.get('Message', '')}".strip())
        return ArtifactError(f"S3 error while {doing}: {exc}")

    def _call(self, doing: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._explain(exc, doing) from exc

    # -- the index -------------------------------------------------------------------------------

    def _fetch_index(self, stage: str) -> tuple[str | None, bytes | None, StageIndex]:
        """The index with its ETag and raw bytes: one request, a 304 when our copy is current."""
        key = self.index_key(stage)
        with self._cache_lock:
            cached = self._cache.get(key)
        kwargs = {"Bucket": self.bucket, "Key": key}
        if cached:
            kwargs["IfNoneMatch"] = cached[0]
        try:
            resp = self.s3.get_object(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if cached and (status == 304 or code in ("304", "NotModified")):
                return cached
            if code in ("NoSuchKey", "404"):
                with self._cache_lock:
                    self._cache.pop(key, None)
                return None, None, StageIndex(service=self.service, stage=stage)
            raise self._explain(exc, f"reading {self.where(key)}") from exc
        except BotoCoreError as exc:
            raise self._explain(exc, f"reading {self.where(key)}") from exc
        raw = resp["Body"].read(MAX_INDEX_BYTES + 1)
        if len(raw) > MAX_INDEX_BYTES:
            raise ArtifactError(f"{self.where(key)} is larger than {MAX_INDEX_BYTES // 1024**2} MB; it was not "
                                "read. Prune the stage, or check who writes to the bucket")
        index = self.parse_index(raw, stage)
        entry = (resp["ETag"], raw, index)
        with self._cache_lock:
            self._cache[key] = entry
        return entry

    def parse_index(self, raw: bytes, stage: str) -> StageIndex:
        """Parse and validate: every artifact's key must be this stage's layout path, and the index
        must be this service's and stage's (not a copy from elsewhere)."""
        where = self.where(self.index_key(stage))
        index = StageIndex.from_json(raw, where, key_for=lambda c, b: self.artifact_key(stage, c, b))
        if index.service != self.service or index.stage != stage:
            raise IndexFormatError(f"{where} says it is the index of {index.service[:64]!r}/{index.stage[:64]!r}, "
                                   f"not {self.service}/{stage}; it was left untouched")
        return index

    def read_index(self, stage: str) -> StageIndex:
        """The stage's index. Shared with the cache: read it, do not change it.

        Callers asking at the same moment share one request: fifty people typing `/rollback prod`
        during an incident cost S3 one revalidation, not fifty.
        """
        key = self.index_key(stage)
        with self._cache_lock:
            flight = self._flights.get(key)
            leading = flight is None
            if leading:
                flight = self._flights[key] = Future()
        if leading:
            try:
                flight.set_result(self._fetch_index(stage))
            except BaseException as exc:
                flight.set_exception(exc)
            finally:
                with self._cache_lock:
                    del self._flights[key]
        try:
            return flight.result()[2]
        except IndexFormatError as exc:
            raise ArtifactError(str(exc)) from exc

    def update_index(self, stage: str, change: Callable[[StageIndex], T]) -> T:
        """Apply ``change`` to a fresh copy of the index and write it back only if nobody else did.

        ``change`` may run several times (once per conflict); it must only touch the index it is given.
        """
        key = self.index_key(stage)
        for attempt in range(self.max_index_attempts):
            try:
                etag, raw, _ = self._fetch_index(stage)
                index = (
                    self.parse_index(raw, stage) if raw is not None
                    else StageIndex(service=self.service, stage=stage)
                )
            except IndexFormatError as exc:
                raise ArtifactError(str(exc)) from exc
            result = change(index)
            body = index.to_json()
            cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                resp = self.s3.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **cond
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                if code in CONFLICT_CODES or status in ("409", "412"):
                    # Someone wrote first: read theirs and apply our change on top of it.
                    self.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))
                    continue
                raise self._explain(exc, f"writing {self.where(key)}") from exc
            except BotoCoreError as exc:
                raise self._explain(exc, f"writing {self.where(key)}") from exc
            with self._cache_lock:
                self._cache[key] = (resp["ETag"], body, self.parse_index(body, stage))
            return result
        raise ArtifactError(
            f"{self.where(key)} kept changing under us ({self.max_index_attempts} attempts); "
            "nothing was written, run the command again"
        )

    def stages(self) -> list[str]:
        """The stages that have a folder under this service (one LIST request)."""
        prefix = f"{self.prefix}{self.service}/"
        resp = self._call(f"listing stages under {self.where(prefix)}", self.s3.list_objects_v2,
                          Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        return sorted(p["Prefix"][len(prefix):].rstrip("/") for p in resp.get("CommonPrefixes", []))

    # -- publish ---------------------------------------------------------------------------------

    def publish(
        self,
        stage: str,
        commit: str,
        package_dir: Path,
        build_id: str | None = None,
        author: str = "",
        message: str = "",
        deployed: bool = False,
        by: str = "",
    ) -> PublishResult:
        validate_stage(stage)
        commit = commit.strip().lower()
        if not COMMIT_RE.match(commit):
            raise ArtifactError(f"commit {commit!r} is not a full SHA; pass the 40-character commit id")
        if build_id is not None and not BUILD_RE.match(build_id):
            raise ArtifactError(f"build id {build_id!r} must be letters, digits, '.', '_' or '-'")

        with tempfile.TemporaryDirectory(prefix="rollback-bot-publish-") as tmp:
            zip_path = Path(tmp) / "package.zip"
            try:
                digest = zip_package(Path(package_dir), zip_path)
            except PackageError as exc:
                raise ArtifactError(str(exc)) from exc
            build_id = build_id or f"pkg-{digest.sha256[:12]}"  # same package, same id: republish is a no-op
            key = self.artifact_key(stage, commit, build_id)

            existing = self.read_index(stage).find(commit, build_id)
            if existing is not None and existing.sha256 != digest.sha256:
                raise ArtifactError(
                    f"build {build_id} of {commit[:7]} is already published for {stage} with different "
                    "contents; publish this package under a new --build-id"
                )
            uploaded = existing is None or not self._object_matches(key, digest.sha256)
            if uploaded:
                self._upload(zip_path, key, digest.sha256, digest.size, commit, build_id)

        artifact = Artifact(
            commit=commit, build_id=build_id, key=key, sha256=digest.sha256, size=digest.size,
            created=self.clock(), author=author, message=message,
        )

        def add(index: StageIndex) -> tuple[Artifact, bool]:
            current = index.find(commit, build_id)
            if current is None:
                current = Artifact(**vars(artifact))
                index.add(current)
            elif current.sha256 != artifact.sha256:
                raise ArtifactError(
                    f"build {build_id} of {commit[:7]} was just published for {stage} with different "
                    "contents by someone else; publish under a new --build-id"
                )
            went_live = index.set_live(current, by, self.clock()) if deployed else False
            return current, went_live

        try:
            stored, went_live = self.update_index(stage, add)
        except ArtifactError:
            if uploaded and existing is None:
                self._delete_quietly(key)  # leave no object the index does not know about
            raise
        return PublishResult(stored, uploaded, went_live)

    def _object_matches(self, key: str, sha256: str) -> bool:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._explain(exc, f"checking {self.where(key)}") from exc
        return head.get("Metadata", {}).get("sha256") == sha256

    def _upload(self, path: Path, key: str, sha256: str, size: int, commit: str, build_id: str) -> None:
        extra = {
            "ContentType": "application/zip",
            "Metadata": {"sha256": sha256, "size": str(size), "commit": commit, "build-id": build_id},
        }
        try:
            self.s3.upload_file(str(path), self.bucket, key, ExtraArgs=extra)
        except Exception as exc:  # boto3's transfer wraps ClientError in S3UploadFailedError
            cause = exc.__cause__ or exc.__context__
            if isinstance(exc, ClientError | BotoCoreError):
                cause = exc
            if isinstance(cause, ClientError | BotoCoreError):
                raise self._explain(cause, f"uploading {self.where(key)}") from exc
            raise ArtifactError(f"uploading {self.where(key)} failed: {exc}") from exc

    def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(ClientError, BotoCoreError):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    # -- live builds -----------------------------------------------------------------------------

    def mark_deployed(
        self, stage: str, commit: str, build_id: str | None = None, by: str = "", via: str = "deploy"
    ) -> tuple[Artifact, bool]:
        """Record a build as live. Returns it and whether anything changed."""
        commit = commit.strip().lower()

        def change(index: StageIndex) -> tuple[Artifact, bool]:
            if build_id:
                found = index.find(commit, build_id)
                if found is None:
                    raise ArtifactError(
                        f"build {build_id} of {commit[:7]} is not published for {stage}; "
                        "run `rollback-bot publish` for it first"
                    )
            else:
                builds = [a for a in index.artifacts if a.commit == commit]
                if not builds:
                    raise ArtifactError(
                        f"commit {commit[:7]} has no published build for {stage}; "
                        "run `rollback-bot publish` for it first"
                    )
                found = builds[0]
            return found, index.set_live(found, by, self.clock(), via)

        return self.update_index(stage, change)

    def note_notice(self, stage: str, record: LiveRecord, channel: str, ts: str) -> bool:
        """Record which Slack message announced ``record``, so it can be edited when the build stops being live."""
        return self.update_index(stage, lambda index: index.note_notice(record.commit, record.build_id, record.at,
                                                                        channel, ts))

    def unfreeze(self, stage: str) -> Mark | None:
        """Lift the stage's freeze; returns the freeze that was there, if any."""

        def change(index: StageIndex) -> Mark | None:
            was, index.freeze = index.freeze, None
            return was

        return self.update_index(validate_stage(stage), change)

    # -- download --------------------------------------------------------------------------------

    def _check_object(self, artifact: Artifact, resp: dict) -> None:
        """The object's own metadata (written by publish) must agree with the index entry: an
        index edited to point at another object, or an object swapped under it, is refused."""
        meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
        if meta.get("sha256") != artifact.sha256:
            raise ChecksumError(
                f"{artifact.label()}: the object's sha256 metadata ({str(meta.get('sha256'))[:12]}…) does not "
                f"match the index ({artifact.sha256[:12]}…). Nothing was unpacked. Someone changed the bucket "
                "by hand: republish that build from CI, or roll back to another build")

    def download(self, artifact: Artifact, dest: Path) -> Path:
        """Fetch ``artifact`` into ``dest`` (streamed), verify it, and unzip it there.

        Returns the folder holding the package. Nothing is unzipped unless size and sha256 match,
        both the index's and the object's own metadata.
        """
        resp = self._call(f"downloading {self.where(artifact.key)}", self.s3.get_object,
                          Bucket=self.bucket, Key=artifact.key)
        self._check_object(artifact, resp)
        try:
            return receive_package(resp["Body"].iter_chunks(CHUNK), artifact, dest, self.limits)
        except BotoCoreError as exc:
            raise self._explain(exc, f"downloading {self.where(artifact.key)}") from exc
        finally:
            resp["Body"].close()

    def presign(self, artifact: Artifact, seconds: int) -> str:
        """A link that downloads ``artifact`` for ``seconds``, for a job runner that holds no key to the bucket."""
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": artifact.key},
                                              ExpiresIn=int(seconds))

    def read_members(self, artifact: Artifact, names: list[str]) -> dict[str, bytes]:
        """A few files of a stored package, read with ranged GETs (the zip's directory and those
        entries only): planning a rollback of a 250 MB package reads a few kilobytes."""
        reader = _RangeReader(self, artifact)
        try:
            with zipfile.ZipFile(reader) as zf:
                check_limits(zf, Limits(max_total=MAX_PACKAGE_BYTES * 4, max_ratio=10**9))
                return read_members(zf, names)
        except zipfile.BadZipFile as exc:
            raise ArtifactError(f"{artifact.label()} is not a valid zip archive ({exc})") from exc
        except PackageError as exc:
            raise ArtifactError(f"{artifact.label()}: {exc}") from exc

    # -- prune -----------------------------------------------------------------------------------

    def prune(self, stage: str, keep: int, dry_run: bool = False) -> PruneResult:
        """Drop all but the newest ``keep`` builds; never the live one, the last known-good one,
        or one a running job uses. The index changes first, so no entry ever points to nothing."""
        if keep < 1:
            raise ArtifactError("--keep must be at least 1")

        def plan(index: StageIndex) -> PruneResult:
            result = PruneResult()
            if index.live:
                result.protected[index.live.ident] = "live"
            prev = index.previous()
            if prev:
                result.protected.setdefault(prev[0].ident, "last known-good")
            for use in index.in_use:
                result.protected.setdefault((use.commit, use.build_id), f"used by job {use.job}")
            for pos, art in enumerate(index.artifacts):
                (result.kept if pos < keep or art.ident in result.protected else result.removed).append(art)
            if not dry_run:
                index.artifacts = result.kept
            return result

        if dry_run or not self.read_index(stage).artifacts:
            return plan(self.parse_index(self.read_index(stage).to_json(), stage))
        result = self.update_index(stage, plan)
        keys = [a.key for a in result.removed]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                resp = self._call(
                    f"deleting old builds under {self.where(self.stage_prefix(stage))}",
                    self.s3.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except ArtifactError:
                # The index no longer lists them, so nothing can use them: report, do not fail.
                result.failed_deletes += batch
                continue
            result.failed_deletes += [e["Key"] for e in resp.get("Errors", [])]
        return result

"""A job runner's way to the target's package: a presigned link, so the runner holds no key to the bucket.

The same checks as the bot's own download: the object's sha256 metadata must agree with the index, and
the bytes with both (size and sha256) before anything is unzipped.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from bot.adapters.archive import CHUNK, Limits
from bot.adapters.artifacts import ArtifactError, ChecksumError, receive_package
from bot.core.stage_index import Artifact

TIMEOUT = 60.0  # seconds without a byte before the download is given up on
ATTEMPTS = 5  # as the bot's own S3 client: 5xx and dropped connections are tried again, with backoff


class PackageLink:
    def __init__(self, url: str, service: str, limits: Limits | None = None, timeout: float = TIMEOUT):
        if not url.startswith(("https://", "http://")):
            raise ArtifactError("the package link is not an http(s) address; nothing was downloaded")
        self.url = url
        self.service = service
        self.limits = limits or Limits()
        self.timeout = timeout

    def _open(self, where: str):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return urllib.request.urlopen(self.url, timeout=self.timeout)  # noqa: S310 (scheme checked above)
            except urllib.error.HTTPError as exc:
                if exc.code == 403:
                    raise ArtifactError(f"S3 refused the package link while downloading {where} (HTTP 403: it "
                                        "expired, or the bot's credentials cannot read it); run the job again") from exc
                if exc.code < 500 or attempt == ATTEMPTS:
                    why = f"HTTP {exc.code} after {attempt} attempts" if exc.code >= 500 else f"HTTP {exc.code}"
                    raise ArtifactError(f"S3 kept failing while downloading {where}: {why}. Nothing was "
                                        "deployed; run the job again when S3 recovers") from exc
            except (urllib.error.URLError, OSError) as exc:
                if attempt == ATTEMPTS:
                    why = getattr(exc, "reason", exc)
                    raise ArtifactError(f"cannot reach S3 while downloading {where} ({why}); check "
                                        "AWS_ENDPOINT_URL and the network") from exc
            time.sleep(min(0.5 * 2 ** attempt, 8.0))
        raise AssertionError("unreachable")

    def download(self, artifact: Artifact, dest: Path) -> Path:
        where = f"s3 object {artifact.key}"
        resp = self._open(where)
        with resp:
            meta = resp.headers.get("x-amz-meta-sha256")
            if meta != artifact.sha256:
                raise ChecksumError(
                    f"{artifact.label()}: the object's sha256 metadata ({str(meta)[:12]}…) does not match the "
                    f"index ({artifact.sha256[:12]}…). Nothing was unpacked. Someone changed the bucket by hand: "
                    "republish that build from CI, or roll back to another build")
            try:
                return receive_package(iter(lambda: resp.read(CHUNK), b""), artifact, dest, self.limits)
            except OSError as exc:  # the connection dropped, or the disk is full
                raise ArtifactError(f"downloading {where}: {exc}") from exc

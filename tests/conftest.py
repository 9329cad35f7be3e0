from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.artifacts import ArtifactStore, make_s3_client
from tests.moto_fixture import MotoServer

BUCKET = "rollback-artifacts"
SERVICE = "hello-service"


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Point boto3 (and any child process) at a freshly reset moto server."""
    moto_server.reset()
    env = {
        "AWS_ENDPOINT_URL": moto_server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3(aws_env):
    client = make_s3_client(max_attempts=2)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def store(s3):
    return ArtifactStore(s3, BUCKET, SERVICE, prefix="rollback/", sleep=lambda s: None)


def make_package(root: Path, version: str) -> Path:
    """A folder shaped like `serverless package` output, whose code zip says ``version``."""
    import zipfile

    root.mkdir(parents=True, exist_ok=True)
    template = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"V": {"Type": "AWS::S3::Bucket"}}}
    (root / "cloudformation-template-update-stack.json").write_text(json.dumps(template))
    (root / "serverless-state.json").write_text(json.dumps({"service": SERVICE, "version": version}))
    with zipfile.ZipFile(root / f"{SERVICE}.zip", "w") as zf:
        zf.writestr("handler.js", f"module.exports.hello = async () => ({{ body: '{version}' }});\n")
    os.utime(root / f"{SERVICE}.zip", (1_700_000_000, 1_700_000_000))
    return root


@pytest.fixture
def package(tmp_path):
    def build(version: str = "v1") -> Path:
        return make_package(tmp_path / f"pkg-{version}", version)

    return build


@pytest.fixture(scope="session")
def service_history(tmp_path_factory, moto_server):
    from tests.serverless_fixture import build_history

    env = {"AWS_ENDPOINT_URL": moto_server.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    return build_history(tmp_path_factory.mktemp("service"), env)


@pytest.fixture(scope="session")
def shared_plugin_cache(tmp_path_factory):
    """One plugin cache for the engine tests, so only the first one pays for `npm ci`."""
    return tmp_path_factory.mktemp("plugin-cache")

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.stack import code_sha256
from bot.core.config import load_settings
from bot.engine.build import build_engine
from bot.playground.aws import MotoServer
from tests.support.serverless_fixture import ci_deploy, sls_env

DOCS = Path(__file__).resolve().parent.parent / "docs"
BUCKET = "rollback-artifacts"
SERVICE = "hello-service"
FUNCTION = "hello-service-prod-hello"


pytest_plugins = ["tests.support.app_fixtures"]  # the app rollback tests' repository and bot


def pytest_addoption(parser):
    parser.addoption("--update-docs", action="store_true",
                     help="write the browser test's screenshots into docs/ (default: a temporary folder)")


def pytest_collection_modifyitems(config, items):
    """The fast tier must stay fast: a test that deploys with the real Serverless CLI is marked e2e."""
    for item in items:
        real = {"service_history", "make_engine", "prod"} & set(getattr(item, "fixturenames", ()))
        if real and item.get_closest_marker("e2e") is None:
            raise pytest.UsageError(f"{item.nodeid} uses {', '.join(sorted(real))} (real deploys): mark it e2e")


@pytest.fixture(scope="session")
def screenshots(request, tmp_path_factory) -> Path:
    """Where the browser test saves its screenshots: docs/ only when asked (--update-docs)."""
    return DOCS if request.config.getoption("--update-docs") else tmp_path_factory.mktemp("screenshots")


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
        # a fixed timestamp: the same version must give the same bytes, whenever it is built
        entry = zipfile.ZipInfo("handler.js", date_time=(2020, 1, 1, 0, 0, 0))
        zf.writestr(entry, f"module.exports.hello = async () => ({{ body: '{version}' }});\n")
    os.utime(root / f"{SERVICE}.zip", (1_700_000_000, 1_700_000_000))
    return root


@pytest.fixture
def package(tmp_path):
    def build(version: str = "v1") -> Path:
        return make_package(tmp_path / f"pkg-{version}", version)

    return build


@pytest.fixture(scope="session")
def service_history(tmp_path_factory, moto_server):
    from tests.support.serverless_fixture import build_history

    env = {"AWS_ENDPOINT_URL": moto_server.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    return build_history(tmp_path_factory.mktemp("service"), env)


@pytest.fixture(scope="session")
def shared_plugin_cache(tmp_path_factory):
    """One plugin cache for the engine tests, so only the first one pays for `npm ci`."""
    return tmp_path_factory.mktemp("plugin-cache")


def live_code() -> str:
    return boto3.client("lambda", region_name="us-east-1").get_function_configuration(
        FunctionName=FUNCTION)["CodeSha256"]


def code_of(history, build: str) -> str:
    return code_sha256(history.builds[build].package / "hello-service.zip")


def engine_factory(aws_env, data_root: Path, repo: Path, prepare=lambda data_dir, overrides: None, **base):
    """``make(data_dir=None, **env)`` builds engines on moto and a repository; returns it and the list
    of engines made, to shut down."""
    engines = []

    def make(data_dir: Path | None = None, **overrides):
        data_dir = data_dir or data_root / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        prepare(data_dir, overrides)
        env = {
            **sls_env(aws_env),
            "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
            "ROLLBACK_REPO": str(repo), "ROLLBACK_DATA_DIR": str(data_dir),
            "SLACK_BOT_TOKEN": "xoxb-test-token-123456", **base, **overrides,
        }
        engine = build_engine(load_settings(env, needs=["engine"]))
        engines.append(engine)
        return engine

    return make, engines


@pytest.fixture
def make_engine(aws_env, s3, service_history, shared_plugin_cache, tmp_path):
    def share_plugin_cache(data_dir: Path, overrides: dict) -> None:
        cache = data_dir / "plugin-cache"
        if not cache.exists() and not overrides.pop("cold_cache", False):
            cache.symlink_to(shared_plugin_cache)
        overrides.pop("cold_cache", None)

    make, engines = engine_factory(aws_env, tmp_path, service_history.origin, share_plugin_cache)
    yield make
    for engine in engines:
        engine.jobs.shutdown()


@pytest.fixture
def prod(make_engine, service_history, aws_env):
    """prod with v1 then v2 published and deployed by CI, and the broken commit published."""
    engine = make_engine()
    art = engine.artifacts
    for name in ("v1", "v2"):
        b = service_history.builds[name]
        art.publish("prod", b.commit, b.package, build_id=f"b-{name}", author="Ana Dev", message=name)
        ci_deploy(service_history, name, sls_env(aws_env))
        art.mark_deployed("prod", b.commit, f"b-{name}", by="ci")
    assert live_code() == code_of(service_history, "v2")
    return engine


# -- the fast tier: no Node.js, a small real deploy script ------------------------------------------


@pytest.fixture(scope="session")
def fast_service(tmp_path_factory):
    from tests.support.fast_service import build_fast_service

    return build_fast_service(tmp_path_factory.mktemp("fast-service"))


@pytest.fixture
def make_fast_engine(aws_env, s3, fast_service, tmp_path):
    """Engines whose deploy step is tests/support/deploy_script.py (real processes, moto's Lambda)."""
    from tests.support.fast_service import DEPLOY_COMMAND

    make, engines = engine_factory(aws_env, tmp_path, fast_service.origin, ROLLBACK_DEPLOY_COMMAND=DEPLOY_COMMAND)
    yield make
    for engine in engines:
        engine.jobs.shutdown()


def fast_code(fast_service, version: str) -> str:
    return code_sha256(fast_service.packages[version] / "hello-service.zip")


@pytest.fixture
def fast_prod(make_fast_engine, fast_service, aws_env):
    """prod with v1 then v2 published and deployed by CI (v2 live); v3 published, not deployed."""
    from tests.support.fast_service import deploy

    engine = make_fast_engine()
    art = engine.artifacts
    for name in ("v1", "v2", "v3"):
        art.publish("prod", fast_service.commits[name], fast_service.packages[name], build_id=f"b-{name}",
                    author="Ana Dev", message=name)
        if name != "v3":
            deploy(fast_service.packages[name])
            art.mark_deployed("prod", fast_service.commits[name], f"b-{name}", by="ci")
    assert live_code() == fast_code(fast_service, "v2")
    return engine


@pytest.fixture
def fast_workspace(make_fast_engine, tmp_path):
    """The real Slack app (signed HTTP into Bolt) in front of the fast engine."""
    from tests.support.slack_session import workspaces

    yield from workspaces(make_fast_engine, tmp_path)

"""The app rollback tests' repository and bot (tests/test_app*.py): three services of one monorepo,
api exporting `api-prod-url` from c2 on, worker importing it from c3 on, billing alone, changed last."""

from __future__ import annotations

import git
import pytest

from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.stack import code_sha256
from bot.core.config import load_settings
from tests.support.deploy_script import deploy_package
from tests.support.fast_service import DEPLOY_COMMAND, fast_package, handler
from tests.support.gitrepo import ServiceRepo
from tests.support.serverless_fixture import sls_env
from tests.support.slack_session import workspaces

BUCKET = "rollback-artifacts"  # the bucket the tests' s3 fixture makes (tests/conftest.py)

EXPORT = "api-prod-url"
CONFIG = """
[services.api]
dir = "services/api"

[services.worker]
dir = "services/worker"
after = ["api"]

[services.billing]
dir = "services/billing"

[stages.prod]
approver_must_differ = true

[stages.prod.services.billing]
approvers = ["U-CY", "cy"]   # billing's team (Cy in Slack, "cy" at a terminal): moving billing needs one of them
"""
# (commit message, service, version, exports, imports) per commit; each commit changes one service
# after the first
CHANGES = (
    ("c1", (("api", "v1", (), ()), ("worker", "v1", (), ()), ("billing", "v1", (), ()))),
    ("c2", (("api", "v2", (EXPORT,), ()),)),
    ("c3", (("worker", "v2", (), (EXPORT,)),)),
    ("c4", (("billing", "v2", (), ()),)),
)


def yml(name: str) -> str:
    return f"service: {name}\nprovider:\n  name: aws\nfunctions:\n  hello:\n    handler: handler.hello\n"


class Repo:
    def __init__(self, root):
        self.work = ServiceRepo(root / "work")
        self.commits: dict[str, str] = {}
        self.packages: dict[tuple[str, str], object] = {}
        for name, changes in CHANGES:
            files = {}
            for svc, version, exports, imports in changes:
                files[f"services/{svc}/serverless.yml"] = yml(svc)
                files[f"services/{svc}/handler.js"] = handler(f"{svc} {version}")
                self.packages[(svc, version)] = fast_package(root / f"pkg-{svc}-{version}", f"{svc} {version}",
                                                             service=svc, exports=exports, imports=imports)
            self.commits[name] = self.work.commit(f"{name}: " + ", ".join(f"{c[0]} {c[1]}" for c in changes), files)
        self.origin = root / "origin.git"
        git.Repo.clone_from(self.work.path, self.origin, bare=True).close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return Repo(tmp_path_factory.mktemp("app-repo"))


@pytest.fixture
def app_env(aws_env, s3, repo, tmp_path):
    """CI published every build and deployed each commit's changed services in order: live are api v2 (c2),
    worker v2 (c3) and billing v2 (c4)."""
    for name, changes in CHANGES:
        for svc, version, _, _ in changes:
            store = ArtifactStore(make_s3_client(2), BUCKET, svc, "rollback/")
            store.publish("prod", repo.commits[name], repo.packages[(svc, version)], build_id=f"{svc}-{version}",
                          author="Ana Dev", message=name, deployed=True, by="ci")
            deploy_package(repo.packages[(svc, version)])
    (tmp_path / "rollback.toml").write_text(CONFIG)
    return {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_PREFIX": "rollback/",
            "ROLLBACK_REPO": str(repo.origin), "ROLLBACK_CONFIG": str(tmp_path / "rollback.toml"),
            "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "ROLLBACK_DATA_DIR": str(tmp_path / "bot")}


@pytest.fixture
def app(app_env, tmp_path):
    env = app_env

    def make(**overrides):
        return load_settings({**env, **overrides}, needs=["engine"])

    yield from workspaces(make, tmp_path)


def code(repo, svc: str, version: str) -> str:
    return code_sha256(repo.packages[(svc, version)] / f"{svc}.zip")


def live(lam, svc: str) -> str:
    return lam.get_function(FunctionName=f"{svc}-prod-hello")["Configuration"]["CodeSha256"]


@pytest.fixture
def lam(aws_env):
    import boto3

    return boto3.client("lambda")

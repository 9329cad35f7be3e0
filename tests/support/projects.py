"""The real-world fixture projects of the compatibility matrix (tests/projects/, docs/compatibility.md):
each a small service built from a public Serverless example, with its own CLI and plugins pinned in a
committed lockfile, installed by ./scripts/test. Here they become real git histories that CI packages and
deploys with the project's own CLI, as a team's pipeline does."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import git
import pytest

from bot.adapters.stack import code_sha256
from bot.playground.sample import worktree
from tests.support.gitrepo import ServiceRepo

PROJECTS = Path(__file__).resolve().parent.parent / "projects"


@dataclass(frozen=True)
class Project:
    name: str  # the folder under tests/projects/ and the service's name
    installer: str  # the package manager ./scripts/test installs it with (the bot picks it by lockfile)
    lockfile: str
    functions: tuple[str, ...]
    changed: tuple[str, ...]  # the source files v2 changes ("v1" → "v2" in each)
    ci_env: dict[str, str] = field(default_factory=dict)  # what CI's environment gives `serverless package`

    @property
    def source(self) -> Path:
        return PROJECTS / self.name

    @property
    def cli(self) -> Path:
        return self.source / "node_modules" / ".bin" / "serverless"


ORDERS = Project(  # Serverless Framework v3, serverless-esbuild, package.individually, yarn; variables
    name="orders-api", installer="yarn", lockfile="yarn.lock", functions=("list", "create", "health"),
    changed=("src/list.ts", "src/create.ts"),
    ci_env={"GREETING": "hello from prod", "PAYMENTS_API_KEY": "pay-key-ci-0a1b", "SIGNING_KEY": "sign-key-ci-9z8y"})
SHOP = Project(  # osls with serverless-domain-manager on a REST API, pnpm
    name="shop-web", installer="pnpm", lockfile="pnpm-lock.yaml", functions=("home",), changed=("handler.js",))
ALL = (ORDERS, SHOP)

DOMAIN = "api.shop.example.com"  # shop-web's custom domain (serverless.yml), made by hand once, as teams do
CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/shop-web"
DB_HOST = "db.prod.internal"  # orders-api's `${ssm:/orders/prod/db-host}`, read by its own CLI


def require_project(project: Project) -> None:
    if shutil.which("node") is None or shutil.which(project.installer) is None:
        pytest.skip(f"node and {project.installer} are not installed; ./scripts/test installs them")
    if not project.cli.exists():
        pytest.skip(f"tests/projects/{project.name}/node_modules is missing; ./scripts/test installs it "
                    f"with {project.installer} from its {project.lockfile}")


def _client(name: str, aws_env: dict | None):
    if aws_env is None:  # the test's own environment (the aws_env fixture)
        return boto3.client(name)
    return boto3.client(name, endpoint_url=aws_env["AWS_ENDPOINT_URL"], region_name=aws_env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"])


def stage_resources(project: Project, aws_env: dict | None = None) -> None:
    """What exists in the stage's account before any deploy: the parameter the CLI reads, the domain."""
    if project is ORDERS:
        _client("ssm", aws_env).put_parameter(Name="/orders/prod/db-host", Value=DB_HOST, Type="String", Overwrite=True)
    if project is SHOP:
        apigw = _client("apigateway", aws_env)
        if not any(d["domainName"] == DOMAIN for d in apigw.get_domain_names().get("items", [])):
            apigw.create_domain_name(domainName=DOMAIN, regionalCertificateArn=CERTIFICATE,
                                     endpointConfiguration={"types": ["REGIONAL"]})


@dataclass
class ProjectHistory:
    project: Project
    origin: Path  # what ROLLBACK_REPO points to
    work: ServiceRepo
    commits: dict[str, str] = field(default_factory=dict)
    packages: dict[str, Path] = field(default_factory=dict)  # the folders `serverless package` wrote

    def code(self, build: str, function: str) -> str:
        """CodeSha256 of ``function`` in ``build``'s package (its own zip when packaged individually)."""
        package = self.packages[build]
        own = package / f"{function}.zip"
        return code_sha256(own if own.exists() else package / f"{self.project.name}.zip")


def _files(root: Path) -> dict[str, str]:
    skip = {"node_modules", ".serverless", ".esbuild"}
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and not skip & set(p.relative_to(root).parts)}


def project_env(aws_env: dict, project: Project) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACK_", "SLACK_", "AWS_"))}
    env.update(aws_env)
    env.update(project.ci_env)
    env.update({"SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off", "NODE_NO_WARNINGS": "1"})
    return env


def run_cli(project: Project, tree: Path, args: list[str], env: dict) -> None:
    proc = subprocess.run([str(project.cli), *args], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{project.name}: serverless {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"


def build_project_history(project: Project, root: Path, aws_env: dict) -> ProjectHistory:
    """v1 (the project as committed) and v2 (its handlers say v2), each packaged by the project's own CLI."""
    require_project(project)
    work = ServiceRepo(root / "work")
    files = _files(project.source)
    history = ProjectHistory(project, root / "origin.git", work)
    history.commits["v1"] = work.commit("First version", {**files, ".gitignore": "node_modules/\n.serverless/\n"})
    history.commits["v2"] = work.commit("Say v2", {name: files[name].replace('"v1"', '"v2"').replace("'v1'", "'v2'")
                                                   .replace(" v1", " v2") for name in project.changed},
                                        author="Bo Ops")
    git.Repo.clone_from(work.path, history.origin, bare=True).close()
    env = project_env(aws_env, project)
    stage_resources(project, aws_env)
    for name, commit in history.commits.items():
        out = root / f"pkg-{name}"
        with worktree(work.path, root / f"tree-{name}", commit, project.source / "node_modules") as tree:
            run_cli(project, tree, ["package", "--stage", "prod", "--package", str(out)], env)
        history.packages[name] = out
    return history


def ci_deploy(history: ProjectHistory, build: str, env: dict) -> None:
    """What CI does after packaging: `serverless deploy --package` from a checkout of the commit."""
    project = history.project
    tree = history.packages[build].parent / f"deploy-{build}"
    with worktree(history.work.path, tree, history.commits[build], project.source / "node_modules"):
        run_cli(project, tree, ["deploy", "--stage", "prod", "--package", str(history.packages[build]), "--force"],
                env)


def live(project: Project) -> dict[str, dict]:
    """Each function's configuration in Lambda, by its short name."""
    lam = boto3.client("lambda", region_name="us-east-1")
    return {f: lam.get_function_configuration(FunctionName=f"{project.name}-prod-{f}") for f in project.functions}

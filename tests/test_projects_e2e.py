"""The compatibility matrix (docs/compatibility.md), proven on real projects: each of tests/projects/ is
packaged and deployed by CI with its own CLI and plugins, then rolled back and forward by the bot, its
job runner installing the project's plugin set from the commit's own lockfile, in the sandbox, with the
project's own package manager. moto's server is the stage's account; proof is each function's
CodeSha256 in Lambda.

- orders-api: Serverless Framework v3 (3.40.0), serverless-esbuild with `package.individually`, three
  functions, yarn; deploy-time variables from the bot's table (a literal, an SSM parameter, a Secrets
  Manager key) and a `${ssm:…}` that the Serverless CLI reads itself with the job's credentials.
- shop-web: osls with serverless-domain-manager on a REST API, pnpm; the base path mapping of its
  custom domain points at the service's API after each deploy.
"""

from __future__ import annotations

import json

import boto3
import pytest

from tests.conftest import BUCKET, engine_factory
from tests.support.projects import (
    ALL,
    DOMAIN,
    ORDERS,
    SHOP,
    build_project_history,
    ci_deploy,
    live,
    project_env,
    stage_resources,
)

pytestmark = pytest.mark.e2e

POLICY = """
[stages.prod]
requesters = ["U-ANA"]
approvers = ["U-BO"]

[stages.prod.services.orders-api.env]
GREETING = "hello from prod"
PAYMENTS_API_KEY = { secret = "orders/prod/payments", key = "api_key" }
SIGNING_KEY = { ssm = "/orders/prod/signing-key" }
"""


@pytest.fixture(scope="session")
def projects_cache(tmp_path_factory):
    """One plugin cache for the matrix: each project's set is installed by its first job only."""
    return tmp_path_factory.mktemp("projects-plugin-cache")


@pytest.fixture(scope="session")
def histories(tmp_path_factory, moto_server):
    """Each project's history, built (packaged by CI) the first time a test asks for it."""
    env = {"AWS_ENDPOINT_URL": moto_server.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    built = {}

    def get(project):
        if project.name not in built:
            built[project.name] = build_project_history(project, tmp_path_factory.mktemp(project.name), env)
        return built[project.name]

    return get


@pytest.fixture(params=ALL, ids=lambda p: p.name)
def history(request, histories):
    return histories(request.param)


def secrets_in_the_stage_account() -> None:
    """What orders-api's variables come from in the stage's account (the values CI's pipeline used)."""
    boto3.client("secretsmanager").create_secret(Name="orders/prod/payments", SecretString=json.dumps(
        {"api_key": ORDERS.ci_env["PAYMENTS_API_KEY"]}))
    boto3.client("ssm").put_parameter(Name="/orders/prod/signing-key", Value=ORDERS.ci_env["SIGNING_KEY"],
                                      Type="SecureString")


@pytest.fixture
def bot(history, aws_env, s3, tmp_path, projects_cache):
    """The bot in front of the project's repository, with v1 then v2 deployed by CI (v2 live)."""
    project = history.project
    stage_resources(project)
    secrets_in_the_stage_account()
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)

    def share_cache(data_dir, overrides):
        (data_dir / "plugin-cache").symlink_to(projects_cache)

    make, engines = engine_factory(aws_env, tmp_path, history.origin, share_cache, ROLLBACK_SERVICE=project.name,
                                   ROLLBACK_CONFIG=str(policy), ROLLBACK_SANDBOX="auto", ROLLBACK_BUCKET=BUCKET)
    engine = make()
    env = project_env(aws_env, project)
    for name in ("v1", "v2"):
        engine.artifacts.publish("prod", history.commits[name], history.packages[name], build_id=f"b-{name}",
                                 author="Ana Dev", message=name)
        ci_deploy(history, name, env)
        engine.artifacts.mark_deployed("prod", history.commits[name], f"b-{name}", by="ci")
    yield engine
    for e in engines:
        e.jobs.shutdown()


def run(engine, ref: str):
    plan = engine.plan("prod", ref)
    job = engine.jobs.wait(engine.jobs.start(plan, "U-ANA", "U-BO"), timeout=900)
    return plan, job


def test_a_real_project_rolls_back_and_forward_with_its_own_cli_and_plugins(bot, history):
    project = history.project
    assert {f: c["CodeSha256"] for f, c in live(project).items()} == {f: history.code("v2", f)
                                                                      for f in project.functions}
    plan, job = run(bot, "previous")
    assert plan.target.commit == history.commits["v1"]
    assert job.state == "succeeded", f"{job.reason}\n" + "\n".join(bot.store.output(job.id)[-40:])
    assert {f: c["CodeSha256"] for f, c in live(project).items()} == {f: history.code("v1", f)
                                                                      for f in project.functions}
    output = "\n".join(bot.store.output(job.id))
    installed = [e for e in bot.store.events(job.id) if e["step"] == "install"]
    assert installed and installed[-1]["status"] == "finished", installed
    # the job installed the commit's plugin set with the project's own package manager, from its lockfile
    assert f"$ {project.installer} install --frozen-lockfile" in output

    plan, job = run(bot, "b-v2")  # and forward again: the plugin set is the same, so nothing is installed
    assert plan.forward and job.state == "succeeded", job.reason
    again = bot.store.output(job.id)
    assert not [line for line in again if line.startswith(f"$ {project.installer} ")], "installed again"
    assert {f: c["CodeSha256"] for f, c in live(project).items()} == {f: history.code("v2", f)
                                                                      for f in project.functions}
    if project is ORDERS:
        # every function was packaged on its own, and each has its own code
        assert len({history.code("v1", f) for f in project.functions}) == 3
        assert history.code("v1", "health") == history.code("v2", "health")  # unchanged, the same bytes
        environment = live(project)["list"]["Environment"]["Variables"]
        assert environment["DB_HOST"] == "db.prod.internal" and environment["GREETING"] == "hello from prod"
        for secret in (ORDERS.ci_env["PAYMENTS_API_KEY"], ORDERS.ci_env["SIGNING_KEY"]):
            assert secret not in output  # the deploy had them; nothing it printed shows them
    if project is SHOP:
        acts = " ".join(plan.warnings)
        assert f"serverless-domain-manager will update the base path mapping of `{DOMAIN}`" in acts
        rest_api = boto3.client("cloudformation").describe_stack_resource(
            StackName="shop-web-prod", LogicalResourceId="ApiGatewayRestApi")["StackResourceDetail"]
        mappings = boto3.client("apigateway").get_base_path_mappings(domainName=DOMAIN)["items"]
        assert mappings == [{"basePath": "shop", "restApiId": rest_api["PhysicalResourceId"], "stage": "prod"}]


def test_a_v3_project_without_its_variables_is_refused_before_anyone_approves(histories, aws_env, s3, tmp_path):
    """orders-api with no table for its variables: the plan names each and the setting to add."""
    from bot.core.errors import UserError

    history = histories(ORDERS)

    make, engines = engine_factory(aws_env, tmp_path, history.origin, ROLLBACK_SERVICE=ORDERS.name,
                                   ROLLBACK_BUCKET=BUCKET)
    engine = make()
    try:
        for name in ("v1", "v2"):
            engine.artifacts.publish("prod", history.commits[name], history.packages[name], build_id=f"b-{name}")
        with pytest.raises(UserError) as refused:
            engine.plan("prod", "b-v1")
        text = str(refused.value)
        for name in ("GREETING", "PAYMENTS_API_KEY", "SIGNING_KEY"):
            assert f"${{env:{name}}}" in text
        assert "[stages.prod.env]" in text and "Nothing was deployed" in text
    finally:
        for e in engines:
            e.jobs.shutdown()

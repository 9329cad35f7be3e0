"""One bot for a team: two services of a monorepo (named by its serverless-compose.yml), prod in its own
AWS account through an assumed role (moto's multi-account support), the policy per service."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import boto3
import pytest

from bot.adapters.artifacts import ArtifactStore, make_s3_client
from bot.adapters.stack import code_sha256
from bot.core.config import ConfigError, load_settings
from tests.conftest import BUCKET
from tests.support.fast_service import DEPLOY_COMMAND, DEPLOY_SCRIPT, fast_package, handler, hold_file
from tests.support.gitrepo import ServiceRepo
from tests.support.serverless_fixture import sls_env
from tests.support.slack_session import CHANNEL, all_text, header, workspaces
from tests.support.waiting import wait_for

PROD_ACCOUNT = "111111111111"
PROD_ROLE = f"arn:aws:iam::{PROD_ACCOUNT}:role/rollback-deployer"
DEV_ACCOUNT = "222222222222"
DEV_ROLE = f"arn:aws:iam::{DEV_ACCOUNT}:role/rollback-deployer"
COMPOSE = "services:\n  api:\n    path: services/api\n  worker:\n    path: services/worker\n    dependsOn: api\n"
CONFIG = f"""
[stages.prod]
role_arn = "{PROD_ROLE}"
external_id = "rollback-bot-test"
region = "eu-west-1"
requesters = ["U-ANA", "U-BO", "U-CY"]
approvers = ["U-BO"]
approver_must_differ = true

[stages.prod.services.api]   # the api team approves api
approvers = ["U-CY"]

[stages.dev]                 # another account; anyone may roll dev back
role_arn = "{DEV_ROLE}"
region = "eu-west-1"
"""


def yml(name: str) -> str:
    return (f"service: {name}\nprovider:\n  name: aws\n  runtime: nodejs20.x\n"
            "functions:\n  hello:\n    handler: handler.hello\n")


class Monorepo:
    def __init__(self, root):
        self.work = ServiceRepo(root / "work")
        w = self.work
        self.c1 = w.commit("api and worker v1", {"serverless-compose.yml": COMPOSE,
                                                "services/api/serverless.yml": yml("api"),
                                                "services/api/handler.js": handler("api v1"),
                                                "services/worker/serverless.yml": yml("worker"),
                                                "services/worker/handler.js": handler("worker v1")})
        self.c2 = w.commit("api v2", {"services/api/handler.js": handler("api v2")}, author="Bo Ops")
        self.c3 = w.commit("worker v2", {"services/worker/handler.js": handler("worker v2")}, author="Cy Hasty")
        self.origin = root / "origin.git"
        import git

        git.Repo.clone_from(w.path, self.origin, bare=True).close()
        self.packages = {(svc, v): fast_package(root / f"pkg-{svc}-{v}", f"{svc} {v}", service=svc, region="eu-west-1")
                         for svc in ("api", "worker") for v in ("v1", "v2")}
        self.dev_packages = {v: fast_package(root / f"pkg-worker-dev-{v}", f"worker {v} on dev", stage="dev",
                                             service="worker", region="eu-west-1") for v in ("v1", "v2")}


@pytest.fixture(scope="module")
def monorepo(tmp_path_factory):
    return Monorepo(tmp_path_factory.mktemp("monorepo"))


def assumed(role: str, endpoint: str) -> dict[str, str]:
    creds = boto3.client("sts", endpoint_url=endpoint).assume_role(
        RoleArn=role, RoleSessionName="ci", ExternalId="rollback-bot-test")["Credentials"]
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"], "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}


def lambda_in(env: dict[str, str], endpoint: str):
    return boto3.client("lambda", endpoint_url=endpoint, region_name=env.get("AWS_REGION", "us-east-1"),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        aws_session_token=env.get("AWS_SESSION_TOKEN"))


@pytest.fixture
def team(aws_env, s3, monorepo, tmp_path):
    """CI has published both services (via the real CLI, the service named by Compose) and deployed
    api v2 and worker v2 into prod's own account."""
    (tmp_path / "rollback.toml").write_text(CONFIG)
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_PREFIX": "rollback/",
           "ROLLBACK_REPO": str(monorepo.origin), "ROLLBACK_CONFIG": str(tmp_path / "rollback.toml"),
           "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "SLS_TEST_WHOAMI": "1"}

    def cli(*args, **extra):
        return subprocess.run([sys.executable, "-m", "bot", *args],
                              env={**env, "ROLLBACK_DATA_DIR": str(tmp_path / "ci"), **extra},
                              capture_output=True, text=True, timeout=60, cwd=monorepo.work.path)

    m = monorepo
    for svc, builds in (("api", ((m.c1, "v1"), (m.c2, "v2"))), ("worker", ((m.c1, "v1"), (m.c3, "v2")))):
        for commit, version in builds:
            if version == "v2":  # CI's real command, the service named by --service and Compose in its checkout
                done = cli("publish", "--service", svc, "--stage", "prod", "--commit", commit, "--package",
                           str(m.packages[(svc, version)]), "--build-id", f"{svc}-{version}", "--deployed",
                           "--by", "ci")
                assert done.returncode == 0, done.stderr
            else:  # the same publish, in this process (faster)
                ArtifactStore(make_s3_client(2), BUCKET, svc, "rollback/").publish(
                    "prod", commit, m.packages[(svc, version)], build_id=f"{svc}-{version}", deployed=True, by="ci")
    for commit, version in ((m.c1, "v1"), (m.c3, "v2")):
        ArtifactStore(make_s3_client(2), BUCKET, "worker", "rollback/").publish(
            "dev", commit, m.dev_packages[version], build_id=f"worker-dev-{version}", deployed=True, by="ci")
    prod_env = assumed(PROD_ROLE, aws_env["AWS_ENDPOINT_URL"])
    dev_env = assumed(DEV_ROLE, aws_env["AWS_ENDPOINT_URL"])
    for stage, package, as_role in (("prod", m.packages[("api", "v2")], prod_env),
                                    ("prod", m.packages[("worker", "v2")], prod_env),
                                    ("dev", m.dev_packages["v2"], dev_env)):  # CI's deploys, each as its role
        deployed = subprocess.run([sys.executable, str(DEPLOY_SCRIPT), stage, str(package)],
                                  env={**env, **as_role}, capture_output=True, text=True, timeout=60)
        assert deployed.returncode == 0, deployed.stderr
    return env, cli, prod_env, dev_env


@pytest.fixture
def team_workspace(team, tmp_path):
    env = team[0]

    def make(**overrides):
        return load_settings({**env, "ROLLBACK_DATA_DIR": str(tmp_path / "bot"), **overrides}, needs=["engine"])

    yield from workspaces(make, tmp_path)


def code_in(lam, function: str) -> str | None:
    try:
        return lam.get_function(FunctionName=function)["Configuration"]["CodeSha256"]
    except lam.exceptions.ResourceNotFoundException:
        return None


def test_one_service_rolls_back_in_its_own_account_under_its_own_approvers(team, team_workspace, monorepo, aws_env):
    env, cli, prod_env, dev_env = team
    endpoint = aws_env["AWS_ENDPOINT_URL"]
    ws = team_workspace()
    m = monorepo

    overview = ws.says(ws.ana, "prod")  # a line per service, each with its own listing
    assert f"*api* live `{m.c2[:7]}` (build `api-v2`)" in overview
    assert f"*worker* live `{m.c3[:7]}` (build `worker-v2`)" in overview
    assert f"account {PROD_ACCOUNT} (role rollback-deployer), eu-west-1" in overview
    listing = ws.says(ws.ana, "api prod")
    assert "*api* in *prod* · 2 builds" in listing and "worker-v" not in listing
    n = len(ws.standin.responses)
    reply = ws.standin.responses[n - 2]  # the overview; its "Builds" button opens one service's listing
    button = next(b["accessory"] for b in reply["blocks"] if "worker" in b.get("text", {}).get("text", "")
                  and "accessory" in b)
    assert ws.ana.click({**reply, "ts": "1.000001"}, "list_builds", value=button["value"]) == 200
    assert "*worker* in *prod* · 2 builds" in all_text(ws.reply(n))
    whole = ws.posts_card(ws.ana, "prod previous")  # no service named: the whole app's newest deploy
    assert header(whole.first) == "Undo the newest deploy of prod?"
    ws.ana.click(whole.first, "cancel_plan")

    card = ws.posts_card(ws.ana, "api prod previous")
    assert header(card.first) == f"Roll back api in prod to {m.c1[:7]}?"
    text = all_text(card.first)
    assert f"AWS: account {PROD_ACCOUNT} (role rollback-deployer), eu-west-1" in text
    assert "approval needs one of U-CY other than the requester" in text  # api's own approvers
    assert "not an approver for `api` in `prod`" in ws.clicks(ws.bo, card.first, "approve")  # api's team approves
    ws.cy.click(card.first, "approve")
    done = all_text(card.becomes("✅"))
    assert f"api prod → {m.c1[:7]}" in header(card.now)
    job = ws.engine.store.jobs(service="api")[0]
    # the deploy ran as prod's role, in a session named for the job and its approver (CloudTrail shows it);
    # the thread's last lines are posted after the final card
    identity = f"arn:aws:sts::{PROD_ACCOUNT}:assumed-role/rollback-deployer/rollback-job-{job.id}-U-CY"
    def thread() -> str:
        return "\n".join(m["text"] for m in ws.standin.thread(CHANNEL, card.ts))

    wait_for(lambda: identity in thread(), 30, "the deploy's identity in the thread")
    assert "in eu-west-1" in thread()
    assert "CI is frozen" in done

    status = ws.says(ws.ana, "status")
    assert "`api prod`: <@U-CY>" in status  # frozen, per service
    assert ws.bo.open_home() == 200
    home = all_text(wait_for(lambda: ws.standin.home.get("U-BO"), 10, "the home tab"))
    assert f"*api · prod*: live `{m.c1[:7]}`" in home and f"*worker · prod*: live `{m.c3[:7]}`" in home
    assert f"`api prod` `{m.c2[:7]}` → `{m.c1[:7]}`" in home  # the run, naming its service
    prod_lambda = lambda_in(prod_env, endpoint)
    assert code_in(prod_lambda, "api-prod-hello") == code_sha256(m.packages[("api", "v1")] / "api.zip")
    assert code_in(prod_lambda, "worker-prod-hello") == code_sha256(m.packages[("worker", "v2")] / "worker.zip")
    own = lambda_in({**aws_env, "AWS_REGION": "eu-west-1"}, endpoint)
    assert code_in(own, "api-prod-hello") is None and own.list_functions()["Functions"] == []  # nothing here

    # CI asks per service: api is frozen and its v2 marked bad; worker may deploy
    frozen = cli("check-freeze", "--service", "api", "--stage", "prod", "--commit", m.c2)
    assert frozen.returncode == 1 and "api on stage prod is frozen by U-CY" in frozen.stderr
    assert "rollback-bot unfreeze --service api prod" in frozen.stderr and "marked bad" in frozen.stderr
    assert cli("check-freeze", "--service", "worker", "--stage", "prod", "--commit", m.c3).returncode == 0
    listed = cli("list", "--service", "worker", "prod")
    assert listed.returncode == 0 and "worker-v2" in listed.stdout and "api-v" not in listed.stdout
    unknown = cli("list", "--service", "apii", "prod")
    assert unknown.returncode == 1 and "Did you mean `api`?" in unknown.stderr
    several = cli("list", "prod")
    assert several.returncode == 1 and "serves several services: name one (api, worker)" in several.stderr

    # dev is another account: a rollback from the terminal changes dev's Lambda and nothing of prod's
    rolled = cli("rollback", "--service", "worker", "dev", "previous", "--yes", "--by", "ana",
                 SLS_TEST_PRINT_SECRET="1")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "secret *** token ***" in rolled.stdout  # the job's temporary credentials never show
    assert f"AWS: account {DEV_ACCOUNT} (role rollback-deployer), eu-west-1" in rolled.stdout
    assert "worker in dev runs" in rolled.stdout and "`rollback-bot unfreeze --service worker dev`" in rolled.stdout
    assert f"arn:aws:sts::{DEV_ACCOUNT}:assumed-role/rollback-deployer/rollback-job-" in rolled.stdout
    dev_lambda = lambda_in(dev_env, endpoint)
    assert code_in(dev_lambda, "worker-dev-hello") == code_sha256(m.dev_packages["v1"] / "worker.zip")
    assert code_in(prod_lambda, "worker-prod-hello") == code_sha256(m.packages[("worker", "v2")] / "worker.zip")
    assert code_in(prod_lambda, "worker-dev-hello") is None and own.list_functions()["Functions"] == []


def test_locks_are_per_service_and_stage_and_a_role_that_cannot_be_assumed_is_refused_before_the_card(
        team, team_workspace, monorepo, tmp_path):
    hold = hold_file("hold-the-deploy")
    hold.touch()
    ws = team_workspace(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    api = ws.posts_card(ws.ana, "api prod previous")
    ws.cy.click(api.first, "approve")
    wait_for(lambda: ws.engine.store.locks(), 30, "api's job to hold its lock")
    worker = ws.posts_card(ws.ana, "worker prod previous")  # another service's stage is not busy
    again = ws.posts_card(ws.bo, "api prod previous")
    assert "busy" not in all_text(worker.first)
    assert "is running on `api prod` now" in all_text(again.first)
    assert "api on prod is busy: job" in ws.clicks(ws.cy, again.first, "approve")
    ws.bo.click(worker.first, "approve")
    hold.unlink()  # let both deploys finish
    worker.becomes("✅")
    api.becomes("✅")

    # prod's role refuses the bot (an STS that says AccessDenied): the plan says so, no card is posted
    sts = _refusing_sts()
    try:
        refusing = team_workspace(AWS_ENDPOINT_URL_STS=sts.url)
        cards = refusing.cards()
        said = refusing.says(refusing.ana, "worker prod previous")
        assert f"Cannot assume {PROD_ROLE} for stage `prod` (AccessDenied" in said and "Nothing was deployed" in said
        assert refusing.cards() == cards
    finally:
        sts.stop()


class _refusing_sts:
    """An STS endpoint that refuses every AssumeRole, as a role that does not trust the bot does."""

    BODY = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            b"<Code>AccessDenied</Code><Message>User is not authorized to perform: sts:AssumeRole</Message>"
            b"</Error><RequestId>1</RequestId></ErrorResponse>")

    def __init__(self):
        body = self.BODY

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(403)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_catalog_reports_every_problem_at_once(tmp_path):
    (tmp_path / "c.toml").write_text("""
[services.api]
dir = "../outside"
aftr = ["worker"]

[services.worker]
dir = "services/worker"
after = ["api", "billing"]

[services.prod]
dir = "services/prod"

[stages.prod]
role_arn = "arn:aws:iam::12345:role/x"
region = "mars-1"
external_id = "abc"

[stages.prod.services.api]
approvers = ["U-CY"]
aproovers = ["U-BO"]
""")
    with pytest.raises(ConfigError) as caught:
        load_settings({"ROLLBACK_CONFIG": str(tmp_path / "c.toml"), "ROLLBACK_BUCKET": "b-u-c"}, needs=["engine"])
    text = str(caught.value)
    for expected in ("unknown key `aproovers` in [stages.prod.services.api]",
                     "[services.api]: unknown key `aftr`", "[services.api]: dir must be a relative folder",
                     "worker deploys after `billing`, which is not a service here",
                     "role_arn must be an IAM role ARN", "region 'mars-1' is not an AWS region",
                     "external_id without role_arn", "`prod` is both a stage and a service",
                     "ROLLBACK_REPO is not set"):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_a_compose_service_is_checked_out_where_compose_put_it_at_the_target_commit(aws_env, s3, tmp_path):
    """worker lived in services/worker-old at m1 and moved to services/worker at m2: rolling back to m1
    checks out and deploys the folder that m1's serverless-compose.yml names."""
    import git as gitlib

    from tests.support.deploy_script import deploy_package

    work = ServiceRepo(tmp_path / "work")
    old = "services:\n  api:\n    path: services/api\n  worker:\n    path: services/worker-old\n"
    m1 = work.commit("m1", {"serverless-compose.yml": old, "services/api/serverless.yml": yml("api"),
                            "services/worker-old/serverless.yml": yml("worker"),
                            "services/worker-old/handler.js": handler("worker v1")})
    work.repo.git.mv("services/worker-old", "services/worker")
    m2 = work.commit("m2: worker moves", {"serverless-compose.yml": old.replace("worker-old", "worker"),
                                          "services/worker/handler.js": handler("worker v2")})
    origin = tmp_path / "origin.git"
    gitlib.Repo.clone_from(work.path, origin, bare=True).close()
    packages = {v: fast_package(tmp_path / f"pkg-{v}", f"worker {v}", service="worker") for v in ("v1", "v2")}
    store = ArtifactStore(make_s3_client(2), BUCKET, "worker", "rollback/")
    for commit, v in ((m1, "v1"), (m2, "v2")):
        store.publish("prod", commit, packages[v], build_id=f"worker-{v}", deployed=True, by="ci")
    deploy_package(packages["v2"])
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_PREFIX": "rollback/", "ROLLBACK_REPO": str(origin),
           "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "ROLLBACK_DATA_DIR": str(tmp_path / "bot")}
    start = workspaces(lambda **o: load_settings({**env, **o}, needs=["engine"]), tmp_path)
    ws = next(start)()
    try:
        card = ws.posts_card(ws.ana, "worker prod previous")
        assert f"At {m1[:7]} the service's folder is services/worker-old" in all_text(card.first)
        ws.bo.click(card.first, "approve")
        card.becomes("✅")
        lam = boto3.client("lambda")
        assert code_in(lam, "worker-prod-hello") == code_sha256(packages["v1"] / "worker.zip")
    finally:
        next(start, None)


@pytest.mark.parametrize("name, says", [
    ("prod", "`prod` is both a stage and a service; rename one"),
    ("status", "service `status` is named like the command `/rollback status`; rename it"),
])
def test_a_compose_service_named_like_a_stage_or_a_command_is_refused_at_start_up(tmp_path, name, says):
    from bot.core.config import ConfigError, load_settings

    compose = tmp_path / "serverless-compose.yml"
    compose.write_text(f"services:\n  api:\n    path: services/api\n  {name}:\n    path: services/{name}\n")
    config = tmp_path / "rollback.toml"
    config.write_text('[stages.prod]\napprovers = ["U-BO"]\n')
    with pytest.raises(ConfigError) as refused:
        load_settings({"ROLLBACK_BUCKET": "b-bucket", "ROLLBACK_REPO": "/r", "ROLLBACK_CONFIG": str(config),
                       "ROLLBACK_COMPOSE_FILE": str(compose)}, needs=["engine"])
    assert says in str(refused.value)


def test_a_toml_service_named_like_a_command_is_refused_at_start_up(tmp_path):
    from bot.core.config import ConfigError, load_settings

    config = tmp_path / "rollback.toml"
    config.write_text('[services.api]\ndir = "a"\n\n[services.history]\ndir = "h"\n\n[stages.prod]\n')
    with pytest.raises(ConfigError) as refused:
        load_settings({"ROLLBACK_BUCKET": "b-bucket", "ROLLBACK_REPO": "/r", "ROLLBACK_CONFIG": str(config)},
                      needs=["engine"])
    assert "[services.history]: the service `history` is named like the command `/rollback history`" in str(
        refused.value)


def test_the_catalog_is_read_from_the_remotes_default_branch_never_from_a_pushed_master(tmp_path):
    """origin's default branch is main (api, worker). Someone who may push pushes a branch named master
    whose Compose file names a service of theirs: the bot still serves api and worker; ROLLBACK_BRANCH
    names another branch when a team keeps its Compose file elsewhere."""
    import git as gitlib

    from bot.core.config import load_settings
    from bot.engine.build import with_compose

    work = ServiceRepo(tmp_path / "work")
    work.commit("main", {"serverless-compose.yml": "services:\n  api:\n    path: a\n  worker:\n    path: w\n"})
    work.repo.git.checkout("-b", "master")
    work.commit("evil", {"serverless-compose.yml": "services:\n  evil:\n    path: e\n"})
    work.repo.git.checkout("-b", "release", "main")
    work.commit("release", {"serverless-compose.yml": "services:\n  api:\n    path: a\n"})
    work.repo.git.checkout("main")
    origin = tmp_path / "origin.git"
    gitlib.Repo.clone_from(work.path, origin, bare=True).close()
    assert gitlib.Repo(origin).git.symbolic_ref("HEAD") == "refs/heads/main"

    def served(**env) -> list[str]:
        settings = load_settings({"ROLLBACK_BUCKET": "b-bucket", "ROLLBACK_REPO": str(origin),
                                  "ROLLBACK_DATA_DIR": str(tmp_path / "bot"), **env}, needs=["engine"])
        return sorted(with_compose(settings).catalog.names)

    assert served() == ["api", "worker"]
    assert served(ROLLBACK_BRANCH="release") == ["api"]

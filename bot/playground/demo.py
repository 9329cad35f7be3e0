"""`rollback-bot demo`: the whole product on one machine, with no Slack workspace and no AWS account.

An embedded AWS (moto's server) and a local Slack (the Web API stand-in) on 127.0.0.1; a sample
Serverless service in a real git repository, packaged and deployed by the real CLI and published
with `rollback-bot publish`; the real bot in HTTP mode; and a web page that is a Slack channel.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import signal
import threading
import time
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from bot.adapters import aws_clients
from bot.adapters.plugin_cache import PluginCache
from bot.core.config import ConfigError, load_settings
from bot.playground.aws import MotoServer
from bot.playground.sample import (
    FUNCTION,
    HISTORY,
    ORDERS,
    ORDERS_DIR,
    ORDERS_VERSIONS,
    SERVICE,
    STAGE,
    SampleService,
    version_in,
)
from bot.playground.slack import SlackStandIn, SlackUser
from bot.playground.web import ChannelPage
from bot.slack.notify import names, notify_deployed
from bot.slack.server import assemble, http_server, start_up
from bot.terminal import commands

BUCKET = "rollback-demo-artifacts"
CHANNEL = ("C-OPS", "ops")
USERS = (("U-ANA", "Ana (on call)"), ("U-BO", "Bo (SRE lead)"))
PROD_ACCOUNT = "111111111111"
DEMO_SETTLE = 20  # seconds a rollback's alarms are watched before its card gives the verdict (10 min by default)
ALARM = f"{SERVICE}-{STAGE}-errors"  # in the sample's own stack (serverless.yml `resources`)
POLICY = f"""# The demo's catalog and policy: two services of one repository, and prod in its own AWS
# account (the bot assumes a role there for every job); prod needs a second person to approve.
[services.{SERVICE}]
dir = "."

[services.{ORDERS}]
dir = "{ORDERS_DIR}"

[stages.{STAGE}]
role_arn = "arn:aws:iam::{PROD_ACCOUNT}:role/rollback-deployer"
region = "us-east-1"                 # the stack's own alarms are watched for 30 min after every deploy
approver_must_differ = true
notify_channel = "{CHANNEL[0]}"
"""


class LambdaView:
    """What the demo function runs now: the version string inside the deployed zip, read from AWS."""

    def __init__(self, aws: dict[str, str]) -> None:
        self.lam, self.cfn, self.s3 = (aws_clients.client(name, env=aws) for name in ("lambda", "cloudformation", "s3"))
        self._known: dict[str, str] = {}  # CodeSha256 -> version
        self._lock = threading.Lock()

    def __call__(self) -> dict:
        view = {"function": f"{FUNCTION} · account {PROD_ACCOUNT}"}
        try:
            fn = self.lam.get_function(FunctionName=FUNCTION)
            sha = fn["Configuration"]["CodeSha256"]
            view.update(code_sha256=sha, checked=time.strftime("%H:%M:%S"))
            with self._lock:
                if sha not in self._known:
                    self._known[sha] = self._version(fn["Code"]["Location"])
                view["version"] = self._known[sha]
        except Exception as exc:  # the panel says what went wrong; the channel keeps working
            view["error"] = str(exc)
        return view

    def _version(self, location: str) -> str:
        bucket = self.cfn.describe_stack_resource(
            StackName=f"{SERVICE}-{STAGE}", LogicalResourceId="ServerlessDeploymentBucket",
        )["StackResourceDetail"]["PhysicalResourceId"]
        data = self.s3.get_object(Bucket=bucket, Key=urlsplit(location).path.lstrip("/"))["Body"].read()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return version_in(zf.read("handler.js").decode()) or "unknown"


def run(root: Path, port: int, out=print) -> int:
    """Set everything up under ``root``, serve the page on ``port`` until Ctrl-C, then stop it all."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        out("The demo deploys a real Serverless service, which needs Node.js 18+ and npm. "
            "Install them (Debian/Ubuntu: apt-get install nodejs npm), or run ./scripts/demo, which does.")
        return 2
    # Installed explicitly: a shell that started the demo with SIGINT ignored must not make Ctrl-C
    # useless, and `kill` stops the demo as cleanly as Ctrl-C.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.ExitStack() as running:
        try:
            page = _start(root, port, running, out)
        except KeyboardInterrupt:
            out("\nstopped while setting up")
            return 130
        except OSError as exc:
            out(f"could not start the demo: {exc}. Is port {port} taken? Pass --port with another one.")
            return 1
        out(f"\nrollback-bot demo is ready: {page.url}\n"
            f"Open it in a browser. Type `/rollback {SERVICE} prod previous` as Ana, then approve as Bo.\n"
            "Ctrl-C stops everything.")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            # a second Ctrl-C must not cut the stopping short: a running deploy is being stopped
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            out("\nstopping: the page, the bot (and any deploy it runs), the local Slack and AWS…")
    out("stopped")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _start(root: Path, port: int, running: contextlib.ExitStack, out) -> ChannelPage:
    root.mkdir(parents=True, exist_ok=True)
    # moto says which CloudFormation types it only pretends to create; not news for someone trying the bot
    warnings.filterwarnings("ignore", module="moto")
    logging.getLogger("moto").setLevel(logging.ERROR)
    out(f"Starting an embedded AWS and a local Slack (state under {root})")
    moto = MotoServer()
    running.callback(moto.stop)
    standin = SlackStandIn()
    running.callback(standin.stop)

    state = root / "run"  # the bot's data dir: fresh each run, as moto's AWS is
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    (root / "plugin-cache").mkdir(exist_ok=True)
    (state / "plugin-cache").symlink_to(root / "plugin-cache")  # installed plugins survive between runs
    (state / "policy.toml").write_text(POLICY)
    secret = secrets.token_hex(16)
    # The embedded AWS, handed to the bot in its settings like everything else: nothing is written to
    # this process's environment.
    aws = {"AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}
    outside = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACK_", "SLACK_", "AWS_"))}
    try:
        settings = load_settings({
            **outside, **aws, "SLS_TELEMETRY_DISABLED": "1", "SLS_AWS_MONITORING_FREQUENCY": "200",
            "NODE_NO_WARNINGS": "1", "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_PREFIX": "",
            "ROLLBACK_REPO": str(root / "repo"), "ROLLBACK_DATA_DIR": str(state), "ROLLBACK_CHANNEL": CHANNEL[0],
            "ROLLBACK_CONFIG": str(state / "policy.toml"), "SLACK_BOT_TOKEN": "xoxb-demo-bot-token",
            "SLACK_SIGNING_SECRET": secret, "SLACK_API_URL": standin.api_url, "ROLLBACK_ACTOR": "ci",
            "ROLLBACK_WATCH_POLL": "2",
            "ROLLBACK_SETTLE": str(DEMO_SETTLE),
        }, needs=["engine", "slack"])
    except ConfigError as exc:
        raise OSError(str(exc)) from exc
    aws_clients.client("s3", env=aws).create_bucket(Bucket=BUCKET)  # artifacts: the bot's own account
    prod = _assumed(aws, f"arn:aws:iam::{PROD_ACCOUNT}:role/rollback-deployer")  # CI deploys prod as its role

    out(f"Preparing the sample repository: {SERVICE} at its root and {ORDERS} in {ORDERS_DIR}, three commits")
    sample = SampleService(root, settings.child_env)
    commits = sample.commits()
    sample.install_plugins(PluginCache(root / "plugin-cache"))
    started = time.monotonic()
    for n, (change, commit) in enumerate(zip(HISTORY, commits, strict=True)):
        out(f"  serverless package  {SERVICE} {change.version}  {commit[:7]}  {change.message}")
        package = sample.package(commit)
        _ci(out, settings, "publish", "--service", SERVICE, "--stage", STAGE, "--commit", commit,
            "--build-id", f"demo-{change.version}", "--package", str(package), "--author", change.author,
            "--message", change.message)
        if change is not HISTORY[0]:  # CI deployed v2, then v3: v3 is live and `previous` means v2
            out(f"  serverless deploy --package  {SERVICE} {change.version}  (account {PROD_ACCOUNT})")
            sample.deploy(commit, package, env=prod)
            _ci(out, settings, "mark-deployed", "--service", SERVICE, "--stage", STAGE, "--commit", commit,
                "--build-id", f"demo-{change.version}")
        if n < len(ORDERS_VERSIONS):  # orders changed in the first two commits only: its v2 is live
            version = ORDERS_VERSIONS[n].split()[-1]
            out(f"  serverless package  {ORDERS} {version}  {commit[:7]}")
            package = sample.package(commit, ORDERS_DIR)
            _ci(out, settings, "publish", "--service", ORDERS, "--stage", STAGE, "--commit", commit,
                "--build-id", f"orders-{version}", "--package", str(package), "--author", change.author,
                "--message", change.message)
            out(f"  serverless deploy --package  {ORDERS} {version}  (account {PROD_ACCOUNT})")
            sample.deploy(commit, package, ORDERS_DIR, env=prod)
            _ci(out, settings, "mark-deployed", "--service", ORDERS, "--stage", STAGE, "--commit", commit,
                "--build-id", f"orders-{version}")
    out(f"  ready in {time.monotonic() - started:.0f} s")

    app, engine, service = assemble(settings)
    running.callback(start_up(settings, engine, service).set)
    running.callback(service.fleet.shutdown)  # cancels running rollbacks: their processes are stopped
    bot = http_server(settings, app, engine, host="127.0.0.1", port=0)
    threading.Thread(target=_serve, args=(bot,), daemon=True).start()
    running.callback(bot.close)
    bot_url = f"http://127.0.0.1:{bot.effective_port}/slack/events"
    standin.people.update(USERS)
    users = {uid: SlackUser(standin, bot_url, secret, uid, CHANNEL[0], name=name) for uid, name in USERS}
    alarms = aws_clients.client("cloudwatch", env={**aws, **prod})  # the stack's alarm, in prod's account

    def trip() -> str:
        try:
            alarms.set_alarm_state(AlarmName=ALARM, StateValue="ALARM",
                                   StateReason="Threshold Crossed: 1 datapoint [12.0] was >= 1.0 (demo)")
        except Exception as exc:  # the page says so; the demo goes on
            return f"could not trip {ALARM}: {exc}"
        watching = {w.kind for w in service.watches(service.key(STAGE, SERVICE))}
        # a rollback's settle watch first: the deploy it undid may still be in its window until the next round
        if "settle" in watching:  # the live build came from a rollback: it is not watched as a deploy
            return (f"{ALARM} is in ALARM. The live build came from a rollback, so no alarm post (no loops): the "
                    f"rollback's card says, {DEMO_SETTLE} s after the rollback, whether the alarm stayed in ALARM.")
        if "deploy" in watching:
            return f"{ALARM} is in ALARM: the watch posts in the channel within a few seconds"
        return f"{ALARM} is in ALARM, but no deploy of {SERVICE} in {STAGE} is being watched now: nothing is posted."

    page = ChannelPage(standin, users, CHANNEL, LambdaView({**aws, **prod}), port=port, trip=trip).start()
    running.callback(page.stop)
    return page


def _assumed(aws: dict[str, str], role: str) -> dict[str, str]:
    """Credentials of ``role`` in its account (moto's STS), as CI's deploy step for prod uses them."""
    creds = aws_clients.client("sts", env=aws).assume_role(RoleArn=role, RoleSessionName="demo-ci",
                                                          DurationSeconds=43200)["Credentials"]
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]}


def _ci(out, settings, *argv: str) -> None:
    """A CI command, run by the same code as `rollback-bot …` on a CI machine."""
    shown = [a[:7] if len(a) == 40 and a.isalnum() else a for a in argv]
    out("  $ rollback-bot " + " ".join(f"'{a}'" if " " in a else a for a in shown))
    if commands.run(list(argv), settings, commands.Outlets(deployed=notify_deployed, names=names)) != 0:
        raise RuntimeError(f"`rollback-bot {argv[0]}` failed; see its message above")


def _serve(server) -> None:
    try:
        server.run()
    except OSError:
        pass  # closed under its loop while stopping


def main(data_dir: Path, port: int) -> int:
    return run(data_dir, port, out=lambda text: print(text, flush=True))

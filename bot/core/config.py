"""Settings, read once from the environment and validated together.

Every problem is collected and reported in one message, so a person fixing a deployment
does not discover them one restart at a time.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import yaml

from bot.core.catalog import COMPOSE_FILE, NAME_RE, Catalog
from bot.core.masking import URL_USERINFO
from bot.core.policy import Policy, PolicyError
from bot.core.variables import SourceKind

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
TEMPLATE_FIELDS = {"stage", "package"}
# What a subprocess (installer, deploy) may see of our environment: never the Slack tokens.
CHILD_ENV_NAMES = {"PATH", "HOME", "LANG", "TMPDIR", "TZ", "USER", "SHELL", "HTTP_PROXY", "HTTPS_PROXY",
                   "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "CI"}
CHILD_ENV_PREFIXES = ("AWS_", "SLS_", "SERVERLESS_", "NODE_", "NPM_CONFIG_", "npm_config_", "YARN_", "PNPM_",
                      "LC_", "XDG_")

# What each kind of command needs; anything else is optional.
# ROLLBACK_SERVICE is needed unless the catalog names the services ([services], or a Compose file).
NEEDS = {
    "artifacts": ("ROLLBACK_BUCKET",),
    "engine": ("ROLLBACK_BUCKET", "ROLLBACK_REPO"),
    "slack": ("SLACK_BOT_TOKEN",),
}


class SandboxMode(StrEnum):
    """ROLLBACK_SANDBOX: whether a job's commands run in bubblewrap (bot/adapters/sandbox.py)."""

    REQUIRED = "required"  # no working bubblewrap, no start (the default with a policy file)
    AUTO = "auto"  # bubblewrap when it works, else unsandboxed with a warning (the default without one)
    OFF = "off"  # never: every plan card and the App Home say so


class NodeModules(StrEnum):
    """ROLLBACK_NODE_MODULES: what a sandboxed deploy's node_modules is."""

    READ_ONLY = "read-only"  # the cached plugin set itself, mounted read-only: nothing copied
    COPY = "copy"  # a real copy of it, the job's own to write into (plugins that patch their dependencies)


class ConfigError(Exception):
    """Start-up cannot go on; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "rollback-bot is not configured correctly:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class Secret(str):
    """A string that never shows itself in a repr, a log line or a traceback."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Settings:
    bucket: str = ""
    prefix: str = ""
    service: str = ""
    repo: str = ""
    repo_branch: str = ""  # ROLLBACK_BRANCH: where the catalog (serverless-compose.yml) is read; "": the remote's HEAD
    service_dir: str = "."
    deploy_command: tuple[str, ...] | None = None
    install_command: tuple[str, ...] | None = None
    channel: str = ""
    data_dir: Path = field(default_factory=lambda: Path.home() / ".rollback-bot")
    config_path: Path | None = None
    policy: Policy = field(default_factory=Policy)
    slack_bot_token: Secret = Secret("")
    slack_signing_secret: Secret = Secret("")
    slack_app_token: Secret = Secret("")
    slack_api_url: str = "https://slack.com/api/"
    port: int = 3000
    s3_max_attempts: int = 5
    step_timeout: int = 1800
    lease_seconds: int = 120  # the stage lease in S3 (bot.adapters.lease): a dead holder frees the stage after it
    max_unpacked: int = 2 * 1024**3  # bytes a package may unpack to
    plugin_cache_max: int = 10 * 1024**3  # bytes of cached node_modules before the least recently used go
    retention_days: int = 180  # job rows, events, output and audit entries older than this are pruned
    actor: str = ""
    child_env: Mapping[str, str] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=Catalog)
    # the bot host's own variables that [stages.*.env] names as sources (from_env), read once here
    host_env: Mapping[str, str] = field(default_factory=dict)
    app_concurrency: int = 4  # services of one phase of an app rollback deployed at once
    app_on_failure: str = "finish"  # the other running services of a phase when one fails: finish | cancel
    watch_poll: int = 15  # seconds between the alarm watch's rounds (0: no watch)
    watch_window: int = 1800  # how long after going live a deploy is watched
    settle: int = 600  # how long after a rollback its alarms are watched
    sandbox: SandboxMode = SandboxMode.AUTO
    node_modules: NodeModules = NodeModules.READ_ONLY

    def for_service(self, name: str) -> Settings:
        """These settings as one service of the catalog sees them: its name, folder and repository."""
        entry = self.catalog.service(name)
        return replace(self, service=entry.name, service_dir=entry.dir, repo=entry.repo or self.repo)

    def secrets(self) -> list[str]:
        """Values that must be masked in anything shown to people."""
        aws = [self.child_env.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")]
        slack = [self.slack_bot_token, self.slack_signing_secret, self.slack_app_token]
        repo = [_userinfo(self.repo)]
        return [s for s in slack + aws + repo + list(self.host_env.values()) if s]


def _userinfo(url: str) -> str:
    """The credentials part of a URL (``user:token`` in https://user:token@host/…), to mask by value too."""
    m = URL_USERINFO.match(url or "")
    return m.group(2) if m else ""


def _command_template(name: str, raw: str, problems: list[str]) -> tuple[str, ...] | None:
    if not raw.strip():
        return None
    try:
        args = shlex.split(raw)
    except ValueError as exc:
        problems.append(f"{name} cannot be split into arguments ({exc}); check its quotes")
        return None
    for arg in args:
        for found in re.findall(r"{([^{}]*)}", arg):
            if found not in TEMPLATE_FIELDS:
                problems.append(
                    f"{name} uses {{{found}}}; only {{stage}} and {{package}} can be filled in"
                )
    return tuple(args)


def _int(name: str, raw: str | None, default: int, lo: int, hi: int, problems: list[str]) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be a whole number, got {raw!r}")
        return default
    if not lo <= value <= hi:
        problems.append(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _choice(name: str, raw: str | None, choices: tuple[str, ...], problems: list[str]) -> str:
    value = (raw or "").strip() or choices[0]
    if value not in choices:
        problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return choices[0]
    return value


def _yaml(path: Path, problems: list[str]) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{path} cannot be read as YAML: {str(exc)[:300]}")
        return {}
    return doc if isinstance(doc, dict) else {}


BRANCH_RE = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}$")


def _branch(value: str, problems: list[str]) -> str:
    if value and not BRANCH_RE.match(value):
        problems.append(f"ROLLBACK_BRANCH {value[:60]!r} is not a branch name")
        return ""
    return value


def load_settings(environ: Mapping[str, str] | None = None, needs: Iterable[str] = (),
                  named_service: str = "") -> Settings:
    """Read and validate the settings. ``needs`` names what the command is about to use;
    ``named_service`` is the service a command line names (``--service``): with no catalog and no
    ROLLBACK_SERVICE it is the one service, so a pipeline that names its service needs nothing else."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []

    for group in needs:
        for name in NEEDS[group]:
            if not env.get(name, "").strip():
                problems.append(f"{name} is not set")

    bucket = env.get("ROLLBACK_BUCKET", "").strip()
    if bucket and not BUCKET_RE.match(bucket):
        problems.append(
            f"ROLLBACK_BUCKET {bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lowercase letters, digits, dots, hyphens)"
        )
    prefix = env.get("ROLLBACK_PREFIX", "").strip().lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # the layout joins prefix and service directly; a folder is what people mean
    service = env.get("ROLLBACK_SERVICE", "").strip()
    if service and not NAME_RE.match(service):
        problems.append(f"ROLLBACK_SERVICE {service!r} must be letters, digits, '-' or '_'")
    service_dir = env.get("ROLLBACK_SERVICE_DIR", ".").strip() or "."
    if Path(service_dir).is_absolute() or ".." in Path(service_dir).parts:
        problems.append(f"ROLLBACK_SERVICE_DIR {service_dir!r} must be a relative folder inside the repository")

    api_url = env.get("SLACK_API_URL", "").strip() or "https://slack.com/api/"
    if not re.match(r"^https?://", api_url):
        problems.append(f"SLACK_API_URL {api_url!r} must start with http:// or https://")
    if not api_url.endswith("/"):
        api_url += "/"

    config_path = None
    policy = Policy()
    doc: dict = {}
    raw_config = env.get("ROLLBACK_CONFIG", "").strip()
    if raw_config:
        config_path = Path(raw_config)
        try:
            policy = Policy.load(config_path)  # validated now, so a typo stops start-up instead of a rollback
        except PolicyError as exc:
            problems.append(f"ROLLBACK_CONFIG: {exc}")
        try:  # the catalog's problems are reported with the policy's, all at once
            doc = tomllib.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            doc = {}  # the policy said why
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip() or "us-east-1"
    catalog, catalog_problems = Catalog.parse(doc, str(config_path or "ROLLBACK_CONFIG"), service, service_dir,
                                              env.get("ROLLBACK_REPO", "").strip(), region)
    problems += [f"ROLLBACK_CONFIG: {p}" for p in catalog_problems]
    compose = Path(env.get("ROLLBACK_COMPOSE_FILE", "").strip() or COMPOSE_FILE)
    if not catalog.configured and not service and compose.is_file():
        # CI runs in the repository's checkout: its serverless-compose.yml names the services
        catalog, compose_problems = catalog.with_compose(_yaml(compose, problems), str(compose))
        problems += compose_problems
    if not catalog.services and named_service and NAME_RE.match(named_service):
        service = named_service  # --service alone: a catalog of that one service
        catalog, catalog_problems = Catalog.parse(doc, str(config_path or "ROLLBACK_CONFIG"), service, service_dir,
                                                  env.get("ROLLBACK_REPO", "").strip(), region)
        problems += [f"ROLLBACK_CONFIG: {p}" for p in catalog_problems]
    # The bot (and the engine's commands) can still read a Compose file from ROLLBACK_REPO at start-up.
    if not catalog.services and ("artifacts" in needs and "engine" not in needs
                                 or "engine" in needs and not env.get("ROLLBACK_REPO", "").strip()):
        problems.append("ROLLBACK_SERVICE is not set (or name the services in ROLLBACK_CONFIG's [services], or run "
                        f"where a {COMPOSE_FILE} names them)")

    data_dir = Path(env.get("ROLLBACK_DATA_DIR", "").strip() or Path.home() / ".rollback-bot")

    settings = Settings(
        bucket=bucket,
        prefix=prefix,
        service=service,
        repo=env.get("ROLLBACK_REPO", "").strip(),
        repo_branch=_branch(env.get("ROLLBACK_BRANCH", "").strip(), problems),
        service_dir=service_dir,
        deploy_command=_command_template(
            "ROLLBACK_DEPLOY_COMMAND", env.get("ROLLBACK_DEPLOY_COMMAND", ""), problems
        ),
        install_command=_command_template(
            "ROLLBACK_INSTALL_COMMAND", env.get("ROLLBACK_INSTALL_COMMAND", ""), problems
        ),
        channel=env.get("ROLLBACK_CHANNEL", "").strip(),
        data_dir=data_dir,
        config_path=config_path,
        policy=policy,
        slack_bot_token=Secret(env.get("SLACK_BOT_TOKEN", "").strip()),
        slack_signing_secret=Secret(env.get("SLACK_SIGNING_SECRET", "").strip()),
        slack_app_token=Secret(env.get("SLACK_APP_TOKEN", "").strip()),
        slack_api_url=api_url,
        port=_int("PORT", env.get("PORT"), 3000, 1, 65535, problems),
        s3_max_attempts=_int("ROLLBACK_S3_MAX_ATTEMPTS", env.get("ROLLBACK_S3_MAX_ATTEMPTS"), 5, 1, 20, problems),
        step_timeout=_int("ROLLBACK_STEP_TIMEOUT", env.get("ROLLBACK_STEP_TIMEOUT"), 1800, 1, 86400, problems),
        lease_seconds=_int("ROLLBACK_LEASE_SECONDS", env.get("ROLLBACK_LEASE_SECONDS"), 120, 3, 3600, problems),
        max_unpacked=_int("ROLLBACK_MAX_UNPACKED_MB", env.get("ROLLBACK_MAX_UNPACKED_MB"), 2048, 1, 1024**2,
                          problems) * 1024**2,
        plugin_cache_max=_int("ROLLBACK_PLUGIN_CACHE_MB", env.get("ROLLBACK_PLUGIN_CACHE_MB"), 10240, 1, 1024**3,
                              problems) * 1024**2,
        catalog=catalog,
        host_env={v.ref: env[v.ref] for table in catalog.variables.values() for v in table.values()
                  if v.kind == SourceKind.HOST_ENV and v.ref in env},
        watch_poll=_int("ROLLBACK_WATCH_POLL", env.get("ROLLBACK_WATCH_POLL"), 15, 0, 3600, problems),
        watch_window=_int("ROLLBACK_WATCH_WINDOW", env.get("ROLLBACK_WATCH_WINDOW"), 1800, 1, 7 * 86400, problems),
        settle=_int("ROLLBACK_SETTLE", env.get("ROLLBACK_SETTLE"), 600, 1, 86400, problems),
        app_concurrency=_int("ROLLBACK_APP_CONCURRENCY", env.get("ROLLBACK_APP_CONCURRENCY"), 4, 1, 64, problems),
        app_on_failure=_choice("ROLLBACK_APP_ON_FAILURE", env.get("ROLLBACK_APP_ON_FAILURE"), ("finish", "cancel"),
                               problems),
        # the first choice is the default: required once a policy file says this is for real
        sandbox=SandboxMode(_choice("ROLLBACK_SANDBOX", env.get("ROLLBACK_SANDBOX"),
                                    (SandboxMode.AUTO, SandboxMode.REQUIRED, SandboxMode.OFF) if config_path is None
                                    else (SandboxMode.REQUIRED, SandboxMode.AUTO, SandboxMode.OFF), problems)),
        node_modules=NodeModules(_choice("ROLLBACK_NODE_MODULES", env.get("ROLLBACK_NODE_MODULES"),
                                         (NodeModules.READ_ONLY, NodeModules.COPY), problems)),
        retention_days=_int("ROLLBACK_RETENTION_DAYS", env.get("ROLLBACK_RETENTION_DAYS"), 180, 1, 36500, problems),
        child_env={k: v for k, v in env.items() if k in CHILD_ENV_NAMES or k.startswith(CHILD_ENV_PREFIXES)},
        actor=next(
            (env[k] for k in ("ROLLBACK_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "USER")
             if env.get(k)),
            "",
        ),
    )
    if "slack" in needs and not settings.slack_app_token and not settings.slack_signing_secret:
        problems.append("SLACK_SIGNING_SECRET is not set (needed in HTTP mode, when SLACK_APP_TOKEN is unset)")
    if problems:
        raise ConfigError(problems)
    return settings

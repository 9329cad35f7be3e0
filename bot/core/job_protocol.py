"""What the bot and a job runner (`rollback-bot run-job SPEC`) say to each other.

The bot writes a job spec file (no secrets: what to deploy, from where, with which commands and limits)
and starts the runner with nothing else: no settings, no policy, no sqlite, no Slack tokens, no AWS
keys in its environment. Secrets (the job's AWS credentials, the package's download link) come on its
stdin, one JSON object per line; progress goes back on its stdout, one JSON object per line. The runner
exits with one of ``ExitCode``. Every line is bounded and every field checked on both sides: neither
trusts the other's output more than it must.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path

from bot.core.errors import UserError
from bot.core.events import Event, EventStatus
from bot.core.stage_index import Artifact
from bot.core.variables import SourceKind, VariableSource

SPEC_VERSION = 1
MAX_LINE = 64 * 1024  # a message longer than this is cut off where it is read (output lines are ~8 KB)
MAX_SPEC = 1024 * 1024


class ExitCode(IntEnum):
    SUCCEEDED = 0
    FAILED = 1  # a step failed; the last message says which and why
    USAGE = 2  # the spec (or the first message) could not be read: nothing was done
    CANCELLED = 3  # asked to stop (a cancel message, SIGTERM, or the bot went away: stdin closed)


class ProtocolError(UserError):
    pass


@dataclass(frozen=True)
class JobSpec:
    """One job, as the runner needs it and nothing more."""

    job_id: int
    service: str
    stage: str  # the stage Serverless deploys (`--stage`)
    target: Artifact
    mirror: Path  # the bot's git mirror: the runner only reads it (the commit was fetched when planned)
    service_dir: str
    workdir: Path  # the job's own folder: everything the job writes goes here
    plugin_cache: Path  # this account's plugin cache
    plugin_cache_max: int
    step_timeout: float
    env: dict[str, str]  # the commands' environment, without credentials (those come on stdin)
    deploy_template: tuple[str, ...] | None = None
    install_template: tuple[str, ...] | None = None
    bwrap: str = ""  # bubblewrap's path; empty: the commands run unsandboxed
    hidden: tuple[Path, ...] = ()  # what the sandbox never mounts
    copy_plugins: bool = False  # the deploy gets a real copy of its plugin set, not the cached tree read-only
    # deploy-time variables the runner reads itself, with the job's credentials, when the deploy starts
    variables: tuple[VariableSource, ...] = ()
    deploy_env: dict[str, str] = field(default_factory=dict)  # and the literal ones (not secret)
    # on CodeBuild (bot.core.executor): the bucket the build's own role reads the package from ("" on the host)
    package_bucket: str = ""
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["target"] = asdict(self.target)
        return json.dumps(data, default=str, indent=1)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        if len(text) > MAX_SPEC:
            raise ProtocolError(f"the job spec is larger than {MAX_SPEC} bytes")
        try:
            data = json.loads(text)
            if data.get("version") != SPEC_VERSION:
                raise ProtocolError(f"job spec version {data.get('version')!r}; this runner reads {SPEC_VERSION}: "
                                    "run the runner of the same rollback-bot as the bot")
            t = data["target"]
            target = Artifact(commit=str(t["commit"]), build_id=str(t["build_id"]), key=str(t["key"]),
                              sha256=str(t["sha256"]), size=int(t["size"]), created=float(t.get("created") or 0))
            env = {str(k): str(v) for k, v in dict(data["env"]).items()}
            return cls(
                job_id=int(data["job_id"]), service=str(data["service"]), stage=str(data["stage"]), target=target,
                mirror=Path(data["mirror"]), service_dir=str(data["service_dir"]), workdir=Path(data["workdir"]),
                plugin_cache=Path(data["plugin_cache"]), plugin_cache_max=int(data["plugin_cache_max"]),
                step_timeout=float(data["step_timeout"]), env=env,
                deploy_template=_strings(data.get("deploy_template")),
                install_template=_strings(data.get("install_template")),
                bwrap=str(data.get("bwrap") or ""), hidden=tuple(Path(p) for p in data.get("hidden") or ()),
                copy_plugins=bool(data.get("copy_plugins")),
                variables=tuple(_variable(v) for v in data.get("variables") or ()),
                deploy_env={str(k): str(v) for k, v in dict(data.get("deploy_env") or {}).items()},
                package_bucket=str(data.get("package_bucket") or ""),
            )
        except ProtocolError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"the job spec cannot be read ({exc.__class__.__name__}: {exc})") from exc


def _variable(data: dict) -> VariableSource:
    kind = SourceKind(data["kind"])
    if kind not in (SourceKind.SSM, SourceKind.SECRET):
        raise ProtocolError(f"a job spec's variable is read from {kind}; only ssm and secret are read by the runner")
    return VariableSource(str(data["name"]), kind, str(data["ref"]), str(data.get("json_key") or ""))


def _strings(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("a command template in the job spec is not a list of strings")
    return tuple(value)


# -- bot -> runner ---------------------------------------------------------------------------------


class ToRunner(StrEnum):
    SECRETS = "secrets"  # first: the package's link, the job's credentials and what to mask
    CREDENTIALS = "credentials"  # fresh credentials, asked for before a step
    CANCEL = "cancel"


@dataclass(frozen=True)
class Credentials:
    aws: dict[str, str]  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (and the region)
    expires: float | None  # None: not temporary (the bot's own key, where STS could not give a session)
    note: str = ""  # what they are, for the job's output ("account 1111…, session rollback-job-7")


@dataclass(frozen=True)
class Secrets:
    package_url: str  # a presigned GET of the target's object: the runner holds no key to the bucket
    credentials: Credentials
    mask: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # deploy-time variables from the bot host's environment


# -- runner -> bot ---------------------------------------------------------------------------------


class FromRunner(StrEnum):
    EVENT = "event"
    WANT_CREDENTIALS = "want_credentials"  # before a step that uses AWS: valid until at least ``until``
    END = "end"


@dataclass(frozen=True)
class LambdaRuns:
    """After a deploy that did not finish: the code one function of the package runs now."""

    function: str
    member: str  # the function's zip inside the package
    actual: str | None  # Lambda's CodeSha256; None: no such function
    target: str  # the target's CodeSha256 of the same function


@dataclass(frozen=True)
class JobEnd:
    state: EventStatus  # SUCCEEDED, FAILED or CANCELLED
    step: str = ""
    reason: str = ""
    runs: LambdaRuns | None = None
    from_cache: bool = False


def encode(kind: StrEnum, value=None) -> str:
    """One line of the protocol."""
    body = {} if value is None else asdict(value)
    if isinstance(value, Event):
        body["status"] = str(value.status)
    return json.dumps({"kind": str(kind), **body}, separators=(",", ":")) + "\n"


def decode_to_runner(line: str):
    data = _load(line)
    kind = data.pop("kind", "")
    if kind == ToRunner.CANCEL:
        return ToRunner.CANCEL
    try:
        if kind == ToRunner.CREDENTIALS:
            return _credentials(data)
        if kind == ToRunner.SECRETS:
            return Secrets(package_url=str(data["package_url"]), credentials=_credentials(data["credentials"]),
                           mask=tuple(str(s) for s in data.get("mask") or ()),
                           env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"a {kind} message from the bot cannot be read ({exc})") from exc
    raise ProtocolError(f"unknown message from the bot: {kind!r}")


def _credentials(data: dict) -> Credentials:
    aws = {str(k): str(v) for k, v in dict(data["aws"]).items() if str(k).startswith("AWS_")}
    expires = data.get("expires")
    return Credentials(aws=aws, expires=None if expires is None else float(expires), note=str(data.get("note") or ""))


@dataclass(frozen=True)
class WantCredentials:
    step: str
    until: float


def decode_from_runner(line: str) -> Event | WantCredentials | JobEnd:
    """A line the runner wrote; anything malformed raises ProtocolError (the bot shows it as output)."""
    data = _load(line)
    kind = data.pop("kind", "")
    try:
        if kind == FromRunner.EVENT:
            duration = data.get("duration")
            return Event(str(data["step"])[:40], EventStatus(data["status"]), str(data.get("text") or ""),
                         None if duration is None else float(duration))
        if kind == FromRunner.WANT_CREDENTIALS:
            return WantCredentials(str(data["step"])[:40], float(data["until"]))
        if kind == FromRunner.END:
            runs = data.get("runs")
            state = EventStatus(data["state"])
            if state not in (EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.CANCELLED):
                raise ValueError(f"a job does not end {state}")
            return JobEnd(state=state, step=str(data.get("step") or "")[:40], reason=str(data.get("reason") or ""),
                          runs=None if not runs else LambdaRuns(
                              function=str(runs["function"]), member=str(runs["member"]),
                              actual=None if runs.get("actual") is None else str(runs["actual"]),
                              target=str(runs["target"])),
                          from_cache=bool(data.get("from_cache")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"a {kind} message from the runner cannot be read ({exc})") from exc
    raise ProtocolError(f"unknown message from the runner: {str(kind)[:40]!r}")


def _load(line: str) -> dict:
    if len(line) > MAX_LINE:
        raise ProtocolError(f"a message longer than {MAX_LINE} characters")
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not a protocol line: {line[:80]!r}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"not a protocol line: {line[:80]!r}")
    return data

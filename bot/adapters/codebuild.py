"""AWS CodeBuild, as a job executor needs it: start a build of the team's project at a commit with the
job's spec as an environment override (``idempotencyToken`` set, so a retried start never starts two),
read its status, read its log lines from CloudWatch Logs, stop it. Reached with the stage's account's
credentials (``env``); every call bounded; every answer checked before it is used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters.aws_clients import client
from bot.core.errors import UserError

CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20)
MAX_LOG_EVENTS = 1000  # per GetLogEvents call; the follower calls again at once while there are more
SPEC_VARIABLE = "ROLLBACK_JOB_SPEC"  # the job spec (bot.core.job_protocol.JobSpec) the build's runner reads


class CodeBuildError(UserError):
    """CodeBuild or CloudWatch Logs could not be asked, or answered something unusable."""


class BuildStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAULT = "FAULT"
    TIMED_OUT = "TIMED_OUT"
    STOPPED = "STOPPED"

    @property
    def done(self) -> bool:
        return self is not BuildStatus.IN_PROGRESS


@dataclass(frozen=True)
class Build:
    """What BatchGetBuilds says of one build."""

    id: str
    status: BuildStatus
    phase: str = ""
    log_group: str = ""
    log_stream: str = ""
    link: str = ""  # the build's log in the console, for the card's thread

    @property
    def project(self) -> str:
        return self.id.split(":", 1)[0]


def _why(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {str(err.get('Message', ''))[:300]}"
    return exc.__class__.__name__


class CodeBuild:
    def __init__(self, env: Mapping[str, str], region: str | None = None):
        self.env, self.region = dict(env), region
        self._cb = client("codebuild", region, CONFIG, self.env)
        self._logs = client("logs", region, CONFIG, self.env)

    @property
    def events(self):
        """botocore's event hooks of the CodeBuild client (tests check what StartBuild was sent)."""
        return self._cb.meta.events

    def start(self, project: str, commit: str, variables: Mapping[str, str], token: str) -> Build:
        overrides = [{"name": k, "value": v, "type": "PLAINTEXT"} for k, v in sorted(variables.items())]
        try:
            resp = self._cb.start_build(projectName=project, sourceVersion=commit,
                                        environmentVariablesOverride=overrides, idempotencyToken=token)
        except (ClientError, BotoCoreError) as exc:
            raise CodeBuildError(f"CodeBuild would not start a build of project {project}: {_why(exc)}. Nothing "
                                 "was deployed. Check the project exists in the stage's account and the bot's "
                                 "role there may codebuild:StartBuild on it (docs/codebuild.md)") from exc
        return self._build(resp.get("build") or {}, project)

    def get(self, build_id: str) -> Build:
        try:
            builds = self._cb.batch_get_builds(ids=[build_id]).get("builds") or []
        except (ClientError, BotoCoreError) as exc:
            raise CodeBuildError(f"CodeBuild could not say how build {build_id} goes: {_why(exc)}") from exc
        found = [b for b in builds if isinstance(b, Mapping) and b.get("id") == build_id]
        if not found:
            raise CodeBuildError(f"CodeBuild knows no build {build_id}")
        return self._build(found[0], build_id.split(":", 1)[0])

    def stop(self, build_id: str) -> None:
        try:
            self._cb.stop_build(id=build_id)
        except (ClientError, BotoCoreError) as exc:
            raise CodeBuildError(f"CodeBuild would not stop build {build_id}: {_why(exc)}") from exc

    def log_lines(self, build: Build, token: str | None) -> tuple[list[str], str | None]:
        """The build's log lines after ``token`` (from the start with None), and the token to read on from.
        A log that does not exist yet (the build is still provisioning) has no lines."""
        if not build.log_group or not build.log_stream:
            return [], token
        args = {"logGroupName": build.log_group, "logStreamName": build.log_stream, "limit": MAX_LOG_EVENTS}
        args.update({"nextToken": token} if token else {"startFromHead": True})
        try:
            resp = self._logs.get_log_events(**args)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return [], token
            raise CodeBuildError(f"the log of build {build.id} could not be read: {_why(exc)}") from exc
        except BotoCoreError as exc:
            raise CodeBuildError(f"the log of build {build.id} could not be read: {_why(exc)}") from exc
        lines = [str(e.get("message", "")) for e in resp.get("events") or [] if isinstance(e, Mapping)]
        return lines, resp.get("nextForwardToken") or token

    @staticmethod
    def _build(raw: Mapping, project: str) -> Build:
        build_id = raw.get("id")
        if not isinstance(build_id, str) or not build_id.startswith(f"{project}:"):
            raise CodeBuildError(f"CodeBuild answered a build that is not of project {project}")
        try:
            status = BuildStatus(raw.get("buildStatus") or "IN_PROGRESS")
        except ValueError:
            status = BuildStatus.FAULT
        logs = raw.get("logs") if isinstance(raw.get("logs"), Mapping) else {}
        return Build(build_id, status, str(raw.get("currentPhase") or ""), str(logs.get("groupName") or ""),
                     str(logs.get("streamName") or ""), str(logs.get("deepLink") or "")[:500])

"""A stand-in for AWS CodeBuild that runs builds: CodeBuild's JSON 1.1 protocol (``POST /`` with
``X-Amz-Target: CodeBuild_20161006.<Operation>``) on a free loopback port, for boto3 pointed at it with
``AWS_ENDPOINT_URL_CODEBUILD``.

moto implements CodeBuild's API but runs nothing: StartBuild drops the environment overrides and every
build "succeeds" at the first BatchGetBuilds. This stand-in does the real work, as CodeBuild does it:

- CreateProject, BatchGetProjects, StartBuild, BatchGetBuilds, StopBuild, ListBuildsForProject;
- a build clones the project's git source (``source.location``, a path or URL git can clone) and checks
  out ``sourceVersion``, then runs the buildspec's phases (install, pre_build, build, post_build; the
  project's inline ``source.buildspec`` or ``buildspec.yml`` in the source) with ``bash -c``, each phase's
  commands in order, with the project's environment variables and the start's overrides;
- the commands get the credentials of the project's service role (AssumeRole against the AWS it is
  given: moto's server), never the caller's, and that AWS's endpoint: "the account's own network";
- every line the commands print goes to CloudWatch Logs, ``/aws/codebuild/<project>`` and a stream named
  for the build, with CodeBuild's own ``[Container]`` lines between, and BatchGetBuilds names them;
- ``idempotencyToken``: a start with the same token and the same parameters within 5 minutes returns the
  same build; other parameters are refused (IdempotentParameterMismatchException);
- StopBuild sends SIGTERM to the build's commands and SIGKILL after a grace period; the build ends
  STOPPED. A project's ``timeoutInMinutes`` ends it TIMED_OUT.

What it does not do: check the caller's signature or IAM (the calls themselves are also checked against
moto), containers (commands run as this user, on this machine), artifacts, caches, VPCs, batch builds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot.adapters.aws_clients import client
from bot.playground.loopback import json_server

TARGET_PREFIX = "CodeBuild_20161006."
PHASES = ("install", "pre_build", "build", "post_build")
TOKEN_SECONDS = 300.0
STOP_GRACE = 10.0
FLUSH_SECONDS = 0.2


class CodeBuildFault(Exception):
    def __init__(self, kind: str, message: str):
        self.kind, self.message = kind, message
        super().__init__(message)


@dataclass
class _Build:
    id: str
    project: dict
    source_version: str
    overrides: list[dict]
    status: str = "IN_PROGRESS"
    phase: str = "SUBMITTED"
    started: float = field(default_factory=time.time)
    ended: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None

    @property
    def stream(self) -> str:
        return self.id.split(":", 1)[1]

    @property
    def group(self) -> str:
        return f"/aws/codebuild/{self.project['name']}"

    def describe(self, region: str, account: str) -> dict:
        return {
            "id": self.id, "arn": f"arn:aws:codebuild:{region}:{account}:build/{self.id}",
            "projectName": self.project["name"], "sourceVersion": self.source_version,
            "buildStatus": self.status, "currentPhase": self.phase, "buildComplete": self.ended is not None,
            "startTime": self.started, **({"endTime": self.ended} if self.ended else {}),
            "environment": {**self.project.get("environment", {}), "environmentVariables": [
                *self.project.get("environment", {}).get("environmentVariables", []), *self.overrides]},
            "serviceRole": self.project.get("serviceRole", ""),
            "logs": {"groupName": self.group, "streamName": self.stream,
                     "deepLink": f"https://console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:"
                                 f"log-groups/log-group/{self.group}/log-events/{self.stream}"},
        }


class CodeBuildStandIn:
    def __init__(self, aws_env: Mapping[str, str], region: str = "us-east-1", account: str = "123456789012"):
        self.aws_env = dict(aws_env)  # the AWS builds run against, and where their logs go
        self.region, self.account = region, account
        self.projects: dict[str, dict] = {}
        self.builds: dict[str, _Build] = {}
        self.calls: list[tuple[str, dict]] = []  # (operation, request) as received
        self.start_delay = 0.0  # seconds StartBuild takes to answer after it started the build (a slow network)
        self._tokens: dict[str, tuple[float, str, str]] = {}  # token -> (when, parameters, build id)
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="codebuild-standin-"))
        self._server, self.url = json_server(self._http, "application/x-amz-json-1.1")

    def stop(self) -> None:
        for build in list(self.builds.values()):
            build.stop.set()
            self._signal(build, signal.SIGKILL)
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._root, ignore_errors=True)

    def wait(self, build_id: str, timeout: float = 120.0) -> str:
        """Until the build has ended (for tests): its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.builds[build_id].ended is not None:
                return self.builds[build_id].status
            time.sleep(0.05)
        raise TimeoutError(f"build {build_id} still runs after {timeout} s")

    # -- the protocol ----------------------------------------------------------------------------

    def _http(self, path: str, headers, body: bytes):
        status, payload = self._handle(headers.get("X-Amz-Target", ""), body)
        return status, payload, {"x-amzn-RequestId": str(uuid.uuid4())}

    def _handle(self, target: str, body: bytes) -> tuple[int, dict]:
        op = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            return 400, {"__type": "SerializationException", "message": "the body is not a JSON object"}
        with self._lock:
            self.calls.append((op, request))
        handler = {"CreateProject": self._create_project, "BatchGetProjects": self._batch_get_projects,
                   "StartBuild": self._start_build, "BatchGetBuilds": self._batch_get_builds,
                   "StopBuild": self._stop_build, "ListBuildsForProject": self._list_builds}.get(op)
        if handler is None:
            return 400, {"__type": "UnknownOperationException", "message": f"{op or target!r} is not supported"}
        try:
            return 200, handler(request)
        except CodeBuildFault as exc:
            return 400, {"__type": exc.kind, "message": exc.message}

    def _project(self, name: object) -> dict:
        project = self.projects.get(str(name))
        if project is None:
            raise CodeBuildFault("ResourceNotFoundException", f"Project cannot be found: arn:aws:codebuild:"
                                 f"{self.region}:{self.account}:project/{name}")
        return project

    def _create_project(self, request: dict) -> dict:
        name = request.get("name")
        if not isinstance(name, str) or not name:
            raise CodeBuildFault("InvalidInputException", "name is required")
        with self._lock:
            if name in self.projects:
                raise CodeBuildFault("ResourceAlreadyExistsException", f"Project already exists: {name}")
            project = {"name": name, "arn": f"arn:aws:codebuild:{self.region}:{self.account}:project/{name}",
                       "source": request.get("source") or {}, "environment": request.get("environment") or {},
                       "serviceRole": request.get("serviceRole", ""),
                       "timeoutInMinutes": int(request.get("timeoutInMinutes") or 60)}
            self.projects[name] = project
        return {"project": project}

    def _batch_get_projects(self, request: dict) -> dict:
        names = request.get("names") or []
        found = [self.projects[n] for n in names if n in self.projects]
        return {"projects": found, "projectsNotFound": [n for n in names if n not in self.projects]}

    def _start_build(self, request: dict) -> dict:
        project = self._project(request.get("projectName"))
        overrides = request.get("environmentVariablesOverride") or []
        version = str(request.get("sourceVersion") or "HEAD")
        token = request.get("idempotencyToken")
        params = json.dumps({k: v for k, v in request.items() if k != "idempotencyToken"}, sort_keys=True)
        with self._lock:
            if token:
                seen = self._tokens.get(token)
                if seen and time.time() - seen[0] < TOKEN_SECONDS:
                    if seen[1] != params:
                        raise CodeBuildFault("IdempotentParameterMismatchException",
                                             "The token was used with other parameters")
                    return {"build": self.builds[seen[2]].describe(self.region, self.account)}
            build = _Build(f"{project['name']}:{uuid.uuid4()}", project, version, list(overrides))
            self.builds[build.id] = build
            if token:
                self._tokens[token] = (time.time(), params, build.id)
        threading.Thread(target=self._run, args=(build,), name=f"codebuild-{build.stream[:8]}", daemon=True).start()
        time.sleep(self.start_delay)
        return {"build": build.describe(self.region, self.account)}

    def _batch_get_builds(self, request: dict) -> dict:
        ids = request.get("ids") or []
        return {"builds": [self.builds[i].describe(self.region, self.account) for i in ids if i in self.builds],
                "buildsNotFound": [i for i in ids if i not in self.builds]}

    def _stop_build(self, request: dict) -> dict:
        build = self.builds.get(str(request.get("id")))
        if build is None:
            raise CodeBuildFault("ResourceNotFoundException", f"Build {request.get('id')} does not exist")
        if build.ended is None:
            build.stop.set()
            self._signal(build, signal.SIGTERM)
            threading.Timer(STOP_GRACE, self._signal, args=(build, signal.SIGKILL)).start()
        return {"build": build.describe(self.region, self.account)}

    def _list_builds(self, request: dict) -> dict:
        name = self._project(request.get("projectName"))["name"]
        return {"ids": [b.id for b in reversed(self.builds.values()) if b.project["name"] == name]}

    @staticmethod
    def _signal(build: _Build, signum: int) -> None:
        proc = build.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)

    # -- running a build -------------------------------------------------------------------------

    def _run(self, build: _Build) -> None:
        log = _LogWriter(client("logs", self.region, env=self.aws_env), build.group, build.stream)
        status = "FAILED"
        try:
            status = self._phases(build, log)
        except Exception as exc:  # the stand-in's own failure ends the build as CodeBuild's would: FAULT
            log.line(f"[Container] {_now()} Phase context status code: CLIENT_ERROR Message: {exc}")
            status = "FAULT"
        finally:
            if build.stop.is_set() and status != "TIMED_OUT":
                status = "STOPPED"
            log.line(f"[Container] {_now()} Phase complete: BUILD State: {status}")
            log.close()
            build.phase, build.status, build.ended = "COMPLETED", status, time.time()

    def _phases(self, build: _Build, log: _LogWriter) -> str:
        work = self._root / build.stream
        src, home = work / "src", work / "home"
        home.mkdir(parents=True)
        build.phase = "DOWNLOAD_SOURCE"
        location = str(build.project.get("source", {}).get("location") or "")
        log.line(f"[Container] {_now()} Waiting for DOWNLOAD_SOURCE")
        for args in (["git", "clone", "--quiet", "--", location, str(src)],
                     ["git", "-C", str(src), "checkout", "--quiet", "--detach", build.source_version]):
            done = subprocess.run(args, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                log.line(f"[Container] {_now()} CLIENT_ERROR: {done.stderr.strip()[:500]}")
                return "FAILED"
        text = build.project.get("source", {}).get("buildspec") or ""
        if not text or "\n" not in text:  # a file name (or none): in the source
            path = src / (text or "buildspec.yml")
            text = path.read_text(encoding="utf-8") if path.is_file() else ""
        spec = yaml.safe_load(text) if text else None
        if not isinstance(spec, dict) or not isinstance(spec.get("phases"), dict):
            log.line(f"[Container] {_now()} YAML_FILE_ERROR: no buildspec with phases")
            return "FAILED"
        env = self._environment(build, src, home)
        deadline = build.started + 60 * build.project["timeoutInMinutes"]
        for phase in PHASES:
            commands = (spec["phases"].get(phase) or {}).get("commands") or []
            if not commands:
                continue
            build.phase = phase.upper()
            log.line(f"[Container] {_now()} Entering phase {phase.upper()}")
            for command in commands:
                if build.stop.is_set():
                    return "STOPPED"
                log.line(f"[Container] {_now()} Running command {command}")
                code = self._command(build, str(command), src, env, log, deadline)
                if code == "TIMED_OUT" or build.stop.is_set():
                    return "TIMED_OUT" if code == "TIMED_OUT" else "STOPPED"
                if code != 0:
                    log.line(f"[Container] {_now()} Command did not exit successfully {command} exit status {code}")
                    return "FAILED"
        return "SUCCEEDED"

    def _environment(self, build: _Build, src: Path, home: Path) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update({k: v for k, v in self.aws_env.items() if k.startswith("AWS_ENDPOINT_URL")})
        env.update(HOME=str(home), CODEBUILD_SRC_DIR=str(src), CODEBUILD_BUILD_ID=build.id,
                   CODEBUILD_BUILD_ARN=f"arn:aws:codebuild:{self.region}:{self.account}:build/{build.id}",
                   CODEBUILD_RESOLVED_SOURCE_VERSION=build.source_version, AWS_REGION=self.region,
                   AWS_DEFAULT_REGION=self.region)
        role = build.project.get("serviceRole") or ""
        if role:  # the project's role, as CodeBuild hands it to the build: nothing of the caller's
            creds = client("sts", self.region, env=self.aws_env).assume_role(
                RoleArn=role, RoleSessionName=f"AWSCodeBuild-{build.stream[:8]}")["Credentials"]
            env.update(AWS_ACCESS_KEY_ID=creds["AccessKeyId"], AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
                       AWS_SESSION_TOKEN=creds["SessionToken"])
        for var in [*build.project.get("environment", {}).get("environmentVariables", []), *build.overrides]:
            if isinstance(var, dict) and var.get("type", "PLAINTEXT") == "PLAINTEXT" and "name" in var:
                env[str(var["name"])] = str(var.get("value", ""))
        return env

    def _command(self, build: _Build, command: str, cwd: Path, env: dict, log: _LogWriter, deadline: float):
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)
        build.proc = proc
        timer = threading.Timer(max(0.0, deadline - time.time()), self._signal, args=(build, signal.SIGKILL))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.line(line.rstrip("\n"))
            code = proc.wait()
        finally:
            timer.cancel()
        return "TIMED_OUT" if time.time() >= deadline else code


class _LogWriter:
    """Lines to one CloudWatch Logs stream, in batches, as CodeBuild's agent sends them."""

    def __init__(self, logs, group: str, stream: str):
        self.logs, self.group, self.stream = logs, group, stream
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        self._lines: list[dict] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._flusher, daemon=True, name=f"codebuild-log-{stream[:8]}")
        self._thread.start()

    def line(self, text: str) -> None:
        with self._lock:
            self._lines.append({"timestamp": int(time.time() * 1000), "message": text[:200_000] or " "})

    def _flush(self) -> None:
        with self._lock:
            batch, self._lines = self._lines, []
        if batch:
            self.logs.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=batch)

    def _flusher(self) -> None:
        while not self._done.wait(FLUSH_SECONDS):
            self._flush()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._flush()


def _now() -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime())

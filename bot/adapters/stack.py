"""The deployed CloudFormation stack and its Lambda functions, compared with a package."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters import aws_clients
from bot.adapters.archive import TEMPLATE_NAME, PackageError

STATE_NAME = "serverless-state.json"


@dataclass(frozen=True)
class PackageInfo:
    """What a Serverless package says about where it deploys."""

    service: str
    stage: str
    region: str
    stack_name: str
    template: dict

    @classmethod
    def read(cls, package_dir: Path, stage: str, default_service: str = "") -> PackageInfo:
        def raw(name: str) -> bytes | None:
            try:
                return (package_dir / name).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise PackageError(f"the package's {name} cannot be read ({exc})") from exc

        return cls.parse(raw(TEMPLATE_NAME), raw(STATE_NAME), stage, default_service)

    @classmethod
    def parse(cls, template_raw: bytes | None, state_raw: bytes | None, stage: str,
              default_service: str = "") -> PackageInfo:
        if template_raw is None:
            raise PackageError(f"the package has no {TEMPLATE_NAME}")
        try:
            template = json.loads(template_raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"the package's {TEMPLATE_NAME} cannot be read ({exc})") from exc
        if not isinstance(template, dict):
            raise PackageError(f"the package's {TEMPLATE_NAME} is not a CloudFormation template")
        state: dict = {}
        if state_raw is not None:
            try:
                raw = json.loads(state_raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PackageError(f"the package's {STATE_NAME} cannot be read ({exc})") from exc
            found = raw.get("service") if isinstance(raw, dict) else None
            state = found if isinstance(found, dict) else {}  # an unexpected shape: use the defaults
        provider = state.get("provider") if isinstance(state.get("provider"), dict) else {}
        service = state.get("service") or default_service
        if isinstance(service, dict):
            service = service.get("name", "") or default_service
        region = provider.get("region") or "us-east-1"
        stack_name = provider.get("stackName") or f"{service}-{stage}"
        return cls(str(service), stage, str(region), str(stack_name), template)

    def built_for(self) -> set[str]:
        """The stages the package's code was built for, read from where Serverless puts the code
        (``serverless/<service>/<stage>/…`` in each function's S3Key). Empty when it has no functions."""
        stages = set()
        for res in (self.template.get("Resources") or {}).values():
            if not isinstance(res, dict) or res.get("Type") != "AWS::Lambda::Function":
                continue
            code = (res.get("Properties") or {}).get("Code") or {}
            key = code.get("S3Key") if isinstance(code, dict) else None
            if isinstance(key, str):
                parts = key.split("/")
                if len(parts) >= 4 and parts[0] == "serverless":
                    stages.add(parts[2])
        return stages

    def check_stage(self) -> None:
        """A prod rollback never deploys a package built for another stage."""
        others = self.built_for() - {self.stage}
        if others:
            raise PackageError(
                f"this package was built for stage {', '.join(sorted(others))}, not {self.stage}: "
                "deploying it would put another stage's code and settings here. Nothing was deployed; "
                "check which package CI published under this stage")

    def functions(self, package_dir: Path) -> dict[str, Path]:
        """Lambda function name -> the zip in the package that holds its code."""
        found = {}
        for _logical, res in self.template.get("Resources", {}).items():
            if res.get("Type") != "AWS::Lambda::Function":
                continue
            props = res.get("Properties", {})
            code = props.get("Code", {})
            key = code.get("S3Key") if isinstance(code, dict) else None
            name = props.get("FunctionName")
            if not isinstance(key, str) or not isinstance(name, str):
                continue  # inline code or a name CloudFormation makes up: nothing to compare
            found[name] = package_dir / PurePosixPath(key).name
        return found


# Serverless names these by a hash of the code, so every code change "removes" one and "adds"
# another; they are reported as replaced, not as resources coming or going.
VERSIONED_TYPES = {"AWS::Lambda::Version", "AWS::Lambda::LayerVersion"}


@dataclass
class TemplateDiff:
    removed: list[tuple[str, str]] = field(default_factory=list)  # (logical id, type)
    added: list[tuple[str, str]] = field(default_factory=list)
    versions_replaced: int = 0
    stack_exists: bool = True

    @property
    def empty(self) -> bool:
        return not self.removed and not self.added


@dataclass
class FunctionCheck:
    function: str
    expected: str
    actual: str | None

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


def code_sha256(zip_path: Path) -> str:
    """Lambda's CodeSha256: the base64 of the zip's sha256."""
    h = hashlib.sha256()
    with open(zip_path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def _resources(template: dict) -> dict[str, str]:
    return {k: v.get("Type", "?") for k, v in (template.get("Resources") or {}).items()}


class StackError(Exception):
    pass


class Stack:
    """One CloudFormation stack, reached with the standard AWS variables."""

    def __init__(self, name: str, region: str, env: Mapping[str, str] | None = None):
        self.name = name
        self.region = region
        self.env = env  # the settings' AWS variables; None: botocore's usual chain
        self._clients: dict[str, object] = {}

    def _client(self, service: str):
        # Made on first use: creating a boto3 client costs ~0.1 s, and most callers need only one.
        if service not in self._clients:
            config = Config(retries={"mode": "standard", "total_max_attempts": 5}, connect_timeout=5, read_timeout=60)
            self._clients[service] = aws_clients.client(service, self.region, config, self.env)
        return self._clients[service]

    @property
    def cfn(self):
        return self._client("cloudformation")

    @property
    def lam(self):
        return self._client("lambda")

    def status(self) -> str:
        """The stack's status, or a plain word when it cannot be read."""
        try:
            stacks = self.cfn.describe_stacks(StackName=self.name)["Stacks"]
        except ClientError as exc:
            if "does not exist" in str(exc):
                return "DOES_NOT_EXIST"
            return f"UNKNOWN ({exc.response.get('Error', {}).get('Code', 'error')})"
        except BotoCoreError as exc:
            return f"UNKNOWN ({exc.__class__.__name__})"
        return stacks[0]["StackStatus"] if stacks else "DOES_NOT_EXIST"

    def template(self) -> dict | None:
        try:
            body = self.cfn.get_template(StackName=self.name, TemplateStage="Original")["TemplateBody"]
        except ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise StackError(f"cannot read stack {self.name}'s template: {exc}") from exc
        except BotoCoreError as exc:
            raise StackError(f"cannot reach CloudFormation for {self.name}: {exc}") from exc
        return json.loads(body) if isinstance(body, str) else dict(body)

    def diff(self, target_template: dict) -> TemplateDiff:
        live = self.template()
        target = _resources(target_template)
        if live is None:
            return TemplateDiff(added=sorted(target.items()), stack_exists=False)
        current = _resources(live)
        removed = sorted((k, t) for k, t in current.items() if k not in target)
        added = sorted((k, t) for k, t in target.items() if k not in current)
        return TemplateDiff(
            removed=[r for r in removed if r[1] not in VERSIONED_TYPES],
            added=[a for a in added if a[1] not in VERSIONED_TYPES],
            versions_replaced=sum(1 for a in added if a[1] in VERSIONED_TYPES),
        )

    def verify(self, functions: dict[str, Path]) -> list[FunctionCheck]:
        checks = []
        for name, zip_path in sorted(functions.items()):
            expected = code_sha256(zip_path) if zip_path.is_file() else "missing from package"
            try:
                actual = self.lam.get_function_configuration(FunctionName=name)["CodeSha256"]
            except ClientError:
                actual = None
            checks.append(FunctionCheck(name, expected, actual))
        return checks

"""The fast tier's service: real git commits and packages shaped like `serverless package` output
(a CloudFormation template with a Lambda function, serverless-state.json, the code zip), deployed by
``deploy_script.py`` into moto's Lambda. No Node.js."""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import git

from tests.support.gitrepo import ServiceRepo

SERVICE = "hello-service"
FUNCTION = "hello-service-prod-hello"
DEPLOY_SCRIPT = Path(__file__).with_name("deploy_script.py")
# Hold files (a test removes one to let a waiting deploy go on) live in a folder the deploy command names:
# the sandbox shows a job only what its command template names, read-only, besides its own work folder.
HOLDS = Path(tempfile.mkdtemp(prefix="rollback-test-holds-"))
DEPLOY_COMMAND = f"{sys.executable} {DEPLOY_SCRIPT} {{stage}} {{package}} {HOLDS}"


def hold_file(name: str = "hold") -> Path:
    """A new path in HOLDS (not created): a deploy with SLS_TEST_DEPLOY_WAIT_FOR set to it waits while it exists."""
    return HOLDS / f"{name}-{uuid.uuid4().hex}"
SERVERLESS_YML = "service: hello-service\nprovider:\n  name: aws\n  runtime: nodejs20.x\nfunctions:\n  hello:\n" \
                 "    handler: handler.hello\n"


def handler(version: str) -> str:
    return f"module.exports.hello = async () => ({{ statusCode: 200, body: '{version}' }});\n"


def fast_package(root: Path, version: str, stage: str = "prod", extra: dict[str, bytes] | None = None,
                 service: str = SERVICE, region: str = "us-east-1", exports: tuple[str, ...] = (),
                 imports: tuple[str, ...] = ()) -> Path:
    """A package folder as `serverless package --stage STAGE` writes it; the same version gives the same bytes."""
    root.mkdir(parents=True, exist_ok=True)
    code_key = f"serverless/{service}/{stage}/1700000000000-2023-11-14T22:13:20.000Z/{service}.zip"
    template = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {
        "ServerlessDeploymentBucket": {"Type": "AWS::S3::Bucket"},
        "HelloLambdaFunction": {"Type": "AWS::Lambda::Function", "Properties": {
            "FunctionName": f"{service}-{stage}-hello", "Handler": "handler.hello",
            "Code": {"S3Bucket": {"Ref": "ServerlessDeploymentBucket"}, "S3Key": code_key},
            **({"Environment": {"Variables": {f"IMPORTED_{n}": {"Fn::ImportValue": name}
                                             for n, name in enumerate(imports)}}} if imports else {})}},
    }}
    if exports:  # as `resources.Outputs` with Export names in a serverless.yml
        template["Outputs"] = {f"Out{n}": {"Value": "x", "Export": {"Name": name}} for n, name in enumerate(exports)}
    (root / "cloudformation-template-update-stack.json").write_text(json.dumps(template))
    (root / "serverless-state.json").write_text(json.dumps(
        {"service": {"service": service, "provider": {"name": "aws", "stage": "dev", "region": region}}}))
    with zipfile.ZipFile(root / f"{service}.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("handler.js", date_time=(2020, 1, 1, 0, 0, 0)), handler(version))
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return root


@dataclass
class FastService:
    origin: Path  # what ROLLBACK_REPO points to
    work: ServiceRepo
    commits: dict[str, str] = field(default_factory=dict)
    packages: dict[str, Path] = field(default_factory=dict)


def build_fast_service(root: Path) -> FastService:
    work = ServiceRepo(root / "work")
    service = FastService(root / "origin.git", work)
    service.commits["v1"] = work.commit("Hello v1", {"serverless.yml": SERVERLESS_YML, "handler.js": handler("v1")})
    service.commits["v2"] = work.commit("Make hello say v2", {"handler.js": handler("v2")}, author="Bo Ops")
    service.commits["v3"] = work.commit("Make hello say v3", {"handler.js": handler("v3")}, author="Cy Hasty")
    git.Repo.clone_from(work.path, service.origin, bare=True).close()
    for name in service.commits:
        service.packages[name] = fast_package(root / f"pkg-{name}", name)
    return service


def deploy(package: Path) -> None:
    """What CI does: deploy the package (the fast deploy script's work, in this process)."""
    from tests.support.deploy_script import deploy_package

    deploy_package(package)

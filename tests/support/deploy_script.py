#!/usr/bin/env python3
"""deploy_script.py STAGE PACKAGE: a small real deploy command for the fast test tier.

It does what matters of `serverless deploy --package` for rollback-bot: each Lambda function in the
package's template gets the code from the package's zip, in moto's Lambda, so the verify step checks
a real CodeSha256. Settings come from SLS_TEST_* variables (the bot passes SLS_* to its children).
"""

import json
import os
import sys
import time
from pathlib import Path

import boto3

_clients: dict[tuple, object] = {}


def _client(name: str):
    """One client per service and endpoint in this process: making one costs ~0.1 s, a fixture deploys often."""
    key = (name, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_ACCESS_KEY_ID"))
    if key not in _clients:
        _clients[key] = boto3.client(name)
    return _clients[key]


def _walk_imports(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["Fn::ImportValue"]} if isinstance(node.get("Fn::ImportValue"), str) else set()
        return found.union(*(_walk_imports(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_walk_imports(v) for v in node))
    return set()


class ExportInUse(Exception):
    pass


def check_exports(service: str, template: dict) -> None:
    """What CloudFormation enforces between stacks, kept in the account's SSM: an export another stack
    imports cannot be removed, and an import needs an export. Raises ExportInUse, or records the stack."""
    ssm = _client("ssm")
    exports = {o["Export"]["Name"] for o in template.get("Outputs", {}).values() if "Export" in o}
    imports = _walk_imports(template.get("Resources", {}))
    params = ssm.get_parameters_by_path(Path="/cfn-test", Recursive=True).get("Parameters", [])
    owner = {p["Name"].rsplit("/", 1)[1]: p["Value"] for p in params if p["Name"].startswith("/cfn-test/exports/")}
    users = {p["Name"].rsplit("/", 1)[1]: set(json.loads(p["Value"])) for p in params
             if p["Name"].startswith("/cfn-test/imports/")}
    for name in sorted(e for e, o in owner.items() if o == service and e not in exports):
        in_use = sorted(s for s, imp in users.items() if name in imp and s != service)
        if in_use:
            raise ExportInUse(f"Export {name} cannot be deleted as it is in use by {', '.join(in_use)}")
    for name in sorted(imports):
        if owner.get(name) not in (None, service) or name in exports:
            continue
        if name not in owner:
            raise ExportInUse(f"No export named {name} found")
    for name in exports:
        ssm.put_parameter(Name=f"/cfn-test/exports/{name}", Value=service, Type="String", Overwrite=True)
    for name in [e for e, o in owner.items() if o == service and e not in exports]:
        ssm.delete_parameter(Name=f"/cfn-test/exports/{name}")
    ssm.put_parameter(Name=f"/cfn-test/imports/{service}", Value=json.dumps(sorted(imports)), Type="String",
                      Overwrite=True)


def deploy_package(package: Path) -> None:
    """Each Lambda function of the package's template gets its code from the package."""
    template = json.loads((package / "cloudformation-template-update-stack.json").read_text())
    if template.get("Outputs") or _walk_imports(template.get("Resources", {})):
        state = json.loads((package / "serverless-state.json").read_text())
        check_exports(state["service"]["service"], template)
    iam, lam = _client("iam"), _client("lambda")
    try:
        role = iam.get_role(RoleName="hello-service-lambda")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(RoleName="hello-service-lambda", AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": []}))["Role"]["Arn"]
    for res in template["Resources"].values():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        props = res["Properties"]
        code = (package / Path(props["Code"]["S3Key"]).name).read_bytes()
        try:
            lam.update_function_code(FunctionName=props["FunctionName"], ZipFile=code)
        except lam.exceptions.ResourceNotFoundException:
            lam.create_function(FunctionName=props["FunctionName"], Runtime="nodejs20.x", Role=role,
                                Handler="handler.hello", Code={"ZipFile": code})


def main(stage: str, package: Path) -> int:
    print(f"Deploying hello-service to stage {stage} from {package.name}", flush=True)
    if os.environ.get("SLS_TEST_PRINT_SECRET"):  # a deploy that prints its credentials: they must be masked
        print(f"secret {os.environ.get('AWS_SECRET_ACCESS_KEY')} token {os.environ.get('AWS_SESSION_TOKEN')}",
              flush=True)
    if os.environ.get("SLS_TEST_WHOAMI"):  # which AWS identity the deploy runs as (an assumed role's session)
        print(f"deploying as {_client('sts').get_caller_identity()['Arn']} in {os.environ.get('AWS_REGION')}",
              flush=True)
    for n in range(int(os.environ.get("SLS_TEST_DEPLOY_LINES", "0"))):
        print(f"line {n} of the deploy output", flush=True)
    for name in filter(None, os.environ.get("SLS_TEST_EXPECT_ENV", "").split(",")):  # deploy-time variables
        value = os.environ.get(name)
        if value is None:
            print(f"Error: Cannot resolve variable: Value not found at \"env\" source for {name}", flush=True)
            return 1
        import hashlib

        # the value itself, as a careless plugin would print it, and a digest the test checks it by
        print(f"{name}={value} sha256={hashlib.sha256(value.encode()).hexdigest()}", flush=True)
    if os.environ.get("SLS_TEST_PATCH_NODE_MODULES"):  # as plugins that patch their dependencies at deploy time
        Path("node_modules", "plugin", "index.js").write_text("patched at deploy time")
    if os.environ.get("SLS_TEST_WRITE_ARTIFACT"):  # as the Serverless CLI keeps its compiled schema validator
        cache = Path(os.environ["HOME"]) / ".serverless" / "artifacts"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / os.environ["SLS_TEST_WRITE_ARTIFACT"]).write_text("module.exports = () => true;\n")
    if os.environ.get("SLS_TEST_DEPLOY_LONG_LINE"):  # one line of that many "a." pairs, then a secret
        sys.stdout.write("a." * int(os.environ["SLS_TEST_DEPLOY_LONG_LINE"]) + os.environ.get("SLS_TEST_SECRET", "")
                         + "\n")
        sys.stdout.flush()
    if os.environ.get("SLS_TEST_FORGE_END"):  # a deploy that writes "the job succeeded" straight to the runner's log
        with open(f"/proc/{os.getppid()}/fd/1", "w") as log:
            log.write('{"kind":"end","state":"succeeded","step":"","reason":"","runs":null,"from_cache":false}\n')
        print("Error: CloudFormation said no (after forging the end)", flush=True)
        return 1
    if os.environ.get("SLS_TEST_DEPLOY_PRINT"):
        print(os.environ["SLS_TEST_DEPLOY_PRINT"], flush=True)
    state = json.loads((package / "serverless-state.json").read_text())
    if os.environ.get("SLS_TEST_FAIL_SERVICE") == state["service"]["service"]:  # this service fails at once
        print("Error: CloudFormation said no (injected)", flush=True)
        return 1
    marker = os.environ.get("SLS_TEST_DEPLOY_WAIT_FOR")  # hold the deploy until a test removes this file
    while marker and Path(marker).exists():
        time.sleep(0.05)
    time.sleep(float(os.environ.get("SLS_TEST_DEPLOY_SLEEP", "0")))
    if os.environ.get("SLS_TEST_DEPLOY_FAIL"):
        print("Error: CloudFormation said no (injected)", flush=True)
        return 1
    try:
        deploy_package(package)
    except ExportInUse as exc:
        print(f"Error: {exc}", flush=True)
        return 1
    print(f"Service deployed to stage {stage}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))

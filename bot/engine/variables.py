"""Deploy-time variables at plan time: every ``${env:NAME}`` the target's serverless.yml needs has a source,
and every SSM parameter and secret named as one can be read in the stage's account, before anyone
approves. Nothing is deployed when they do not; the values themselves are read only by the job's runner."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters import aws_clients
from bot.adapters.source import SourceRepo
from bot.core.errors import UserError
from bot.core.variables import SourceKind, VariableSource, dotenv_names, env_references

CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20)


class VariablesMissing(UserError):
    pass


def check(source: SourceRepo, commit: str, stage: str, deploy_stage: str, service: str,
          variables: Mapping[str, VariableSource], host_env: Mapping[str, str], deploy_env: Mapping[str, str],
          aws_env: Callable[[], Mapping[str, str]], several: bool) -> None:
    """Raises VariablesMissing naming each variable without a source, or a source that cannot be read."""
    files = source.service_files(commit, ["serverless.yml", ".env", f".env.{deploy_stage}"])
    yml = files.get("serverless.yml", "")
    provided = set(variables) | set(deploy_env) | dotenv_names(yml, [files.get(".env", ""),
                                                                     files.get(f".env.{deploy_stage}", "")])
    table = f"[stages.{stage}.services.{service}.env]" if several else f"[stages.{stage}.env]"
    missing = sorted(env_references(yml) - provided)
    if missing:
        uses = ", ".join(f"`${{env:{n}}}`" for n in missing)
        them = "it" if len(missing) == 1 else "them"
        raise VariablesMissing(f"serverless.yml at `{commit[:7]}` uses {uses}; add {them} "
                               f"under `{table}` in ROLLBACK_CONFIG (a literal, from_env, ssm or secret). "
                               "Nothing was deployed.")
    unset = sorted(v.ref for v in variables.values() if v.kind == SourceKind.HOST_ENV and v.ref not in host_env)
    if unset:
        raise VariablesMissing(f"`{table}` takes {', '.join('$' + n for n in unset)} from the bot host's environment, "
                               "but it is not set where the bot runs; set it there and restart the bot, or use ssm "
                               "or secret. Nothing was deployed.")
    for var in variables.values():
        if var.kind in (SourceKind.SSM, SourceKind.SECRET):
            problem = _unreadable(var, aws_env())
            if problem:
                raise VariablesMissing(f"{var.name} comes from {var.describe()}, which {problem} in stage `{stage}`'s "
                                       f"account. Fix it or `{table}`. Nothing was deployed.")


def _unreadable(var: VariableSource, aws_env: Mapping[str, str]) -> str:
    """Why ``var``'s parameter or secret cannot be read with the stage's credentials ("" when it can);
    its metadata only: the value is read by the job's runner, never here."""
    try:
        if var.kind == SourceKind.SSM:
            ssm = aws_clients.client("ssm", None, CONFIG, aws_env)
            found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Option": "Equals",
                                                               "Values": [var.ref]}]).get("Parameters", [])
            return "" if found else "does not exist"
        aws_clients.client("secretsmanager", None, CONFIG, aws_env).describe_secret(SecretId=var.ref)
        return ""
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        if code in ("ResourceNotFoundException", "ParameterNotFound"):
            return "does not exist"
        return f"cannot be read ({code})"
    except BotoCoreError as exc:
        return f"cannot be reached ({exc.__class__.__name__})"

"""Reading a deploy-time variable's value from SSM or Secrets Manager, in the stage's account with the job's
credentials (the job's runner does this when its deploy starts; the bot never holds these values)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters import aws_clients
from bot.core.errors import UserError
from bot.core.variables import SourceKind, VariableSource

CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20)
MAX_VALUE = 64 * 1024  # SSM's advanced parameters hold 8 KB, Secrets Manager 64 KB


class VariableError(UserError):
    pass


def read_variable(var: VariableSource, env: Mapping[str, str]) -> str:
    try:
        if var.kind == SourceKind.SSM:
            resp = aws_clients.client("ssm", None, CONFIG, env).get_parameter(Name=var.ref, WithDecryption=True)
            value = resp["Parameter"]["Value"]
        elif var.kind == SourceKind.SECRET:
            resp = aws_clients.client("secretsmanager", None, CONFIG, env).get_secret_value(SecretId=var.ref)
            value = resp.get("SecretString")
            if value is None:
                raise VariableError(f"{var.name}: {var.describe()} is binary; store it as a string")
            if var.json_key:
                try:
                    value = json.loads(value)[var.json_key]
                except (ValueError, KeyError, TypeError):
                    raise VariableError(f"{var.name}: {var.describe()} has no JSON key {var.json_key!r}") from None
                if not isinstance(value, str):
                    value = json.dumps(value)
        else:
            raise VariableError(f"{var.name}: a {var.kind} source is not read here")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise VariableError(f"{var.name}: {var.describe()} cannot be read in the stage's account ({code})") from exc
    except BotoCoreError as exc:
        raise VariableError(f"{var.name}: {var.describe()} cannot be reached ({exc.__class__.__name__})") from exc
    if len(value) > MAX_VALUE:
        raise VariableError(f"{var.name}: {var.describe()} is larger than {MAX_VALUE} characters")
    return value

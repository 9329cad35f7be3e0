"""Deploy-time variables: what `serverless deploy --package` resolves again from the environment, and where
each value comes from (``[stages.<stage>.env]`` and ``[stages.<stage>.services.<service>.env]``).

A source is a literal (not secret), a variable of the bot host's own environment (by name), an SSM
parameter or a Secrets Manager secret (optionally one JSON key of it). SSM and Secrets Manager are read
by the job's runner, in the stage's account, with the job's credentials, when the deploy starts: the bot
never holds those values, and they are masked in everything the job shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SSM_NAME_RE = re.compile(r"^/?[A-Za-z0-9_.\-/]{1,2048}$")
SECRET_ID_RE = re.compile(r"^[A-Za-z0-9/_+=.@:-]{1,2048}$")
# ${env:NAME} with nothing after the name: a reference with a default (${env:NAME, 'x'}) resolves anyway
ENV_REF_RE = re.compile(r"\$\{\s*env:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
DOTENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", re.M)
USE_DOTENV_RE = re.compile(r"^useDotenv\s*:\s*true\b", re.M)


class SourceKind(StrEnum):
    LITERAL = "value"
    HOST_ENV = "from_env"
    SSM = "ssm"
    SECRET = "secret"


@dataclass(frozen=True)
class VariableSource:
    name: str  # the variable the deploy sees
    kind: SourceKind
    ref: str  # the literal, the host variable's name, the parameter's name or the secret's id
    json_key: str = ""  # a secret's JSON key

    def describe(self) -> str:
        """Where the value comes from, never the value itself (a literal is shown as "a literal")."""
        if self.kind == SourceKind.LITERAL:
            return "a literal"
        if self.kind == SourceKind.HOST_ENV:
            return f"the bot host's ${self.ref}"
        if self.kind == SourceKind.SSM:
            return f"SSM parameter {self.ref}"
        return f"secret {self.ref}" + (f" (key {self.json_key})" if self.json_key else "")


def parse_table(table: object, label: str, problems: list[str]) -> dict[str, VariableSource]:
    """``NAME = "literal"``, ``NAME = { from_env = "HOST_VAR" }``, ``NAME = { ssm = "/path" }`` or
    ``NAME = { secret = "id", key = "json_key" }``."""
    if not isinstance(table, Mapping):
        problems.append(f"{label}: `env` must be a table of NAME = source")
        return {}
    out: dict[str, VariableSource] = {}
    for name, raw in table.items():
        where = f"{label}.env.{name}"
        if not ENV_NAME_RE.match(str(name)):
            problems.append(f"{where}: not an environment variable name (letters, digits, '_')")
            continue
        if isinstance(raw, str):
            out[name] = VariableSource(name, SourceKind.LITERAL, raw)
            continue
        if not isinstance(raw, Mapping) or len(set(raw) & {"from_env", "ssm", "secret"}) != 1:
            problems.append(f"{where}: give a literal string, or exactly one of from_env, ssm, secret "
                            "(e.g. { ssm = \"/prod/email/api-key\" })")
            continue
        extra = set(raw) - {"from_env", "ssm", "secret", "key"}
        if extra or ("key" in raw and "secret" not in raw):
            problems.append(f"{where}: unknown key `{sorted(extra or {'key'})[0]}` (`key` goes only with `secret`)")
            continue
        kind = next(SourceKind(k) for k in ("from_env", "ssm", "secret") if k in raw)
        ref, key = raw[str(kind)], raw.get("key", "")
        pattern = {SourceKind.HOST_ENV: ENV_NAME_RE, SourceKind.SSM: SSM_NAME_RE, SourceKind.SECRET: SECRET_ID_RE}[kind]
        if not isinstance(ref, str) or not pattern.match(ref) or not isinstance(key, str):
            problems.append(f"{where}: {kind} must be a {'variable name' if kind == SourceKind.HOST_ENV else 'name'}")
            continue
        out[name] = VariableSource(name, kind, ref, key)
    return out


def env_references(serverless_yml: str) -> set[str]:
    """The ``${env:NAME}`` a serverless.yml resolves at deploy time with no default to fall back on."""
    return set(ENV_REF_RE.findall(serverless_yml))


def dotenv_names(serverless_yml: str, dotenv_files: Iterable[str]) -> set[str]:
    """With ``useDotenv: true`` Serverless loads the committed .env files: the names they define."""
    if not USE_DOTENV_RE.search(serverless_yml):
        return set()
    return {name for text in dotenv_files for name in DOTENV_LINE_RE.findall(text)}

"""AWS credentials for a stage: the stage's role, assumed with STS, or the bot's own.

Every AWS call a job makes for a stage (reading the live stack, deploying, verifying Lambda) uses
what ``env_for`` returns, and so do the install and deploy subprocesses: temporary credentials and
the stage's region, never the bot's own keys. The session name names the job and the approver, so the
stage account's CloudTrail shows who approved what. The artifact bucket is not touched here: it is
always read and written with the bot's own credentials.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.adapters import aws_clients
from bot.core.catalog import Catalog
from bot.core.errors import UserError
from bot.core.job_protocol import Credentials

OWN_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
SESSION_NAME_RE = re.compile(r"[^\w+=,.@-]")
MIN_SESSION = 900  # STS's floor
MAX_SESSION = 12 * 3600  # STS's ceiling; the role's own MaxSessionDuration may be lower
REUSE_MARGIN = 300.0  # a plan reuses credentials that have at least this long left


class AccountError(UserError):
    """A stage's role could not be assumed: nothing is planned or deployed in that stage."""


def session_name(*parts: str) -> str:
    """An STS session name (2-64 of [\\w+=,.@-]) from the job and the people: CloudTrail shows it."""
    return SESSION_NAME_RE.sub("-", "-".join(p for p in parts if p))[:64] or "rollback-bot"


class Accounts:
    def __init__(self, catalog: Catalog, own_env: Mapping[str, str], session_seconds: int,
                 clock: Callable[[], float] = time.time):
        self.catalog = catalog
        self.own_env = dict(own_env)  # the bot's settings' AWS variables (its own credentials)
        self.session_seconds = max(MIN_SESSION, min(MAX_SESSION, session_seconds))
        self.clock = clock
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def describe(self, stage: str) -> str:
        return self.catalog.account(stage).describe()

    def env_for(self, stage: str, name: str, fresh: bool = False) -> dict[str, str]:
        """The environment for AWS work on ``stage``: the stage's region and, with a role, temporary
        credentials of a session called ``name``. ``fresh`` always assumes anew (a job); otherwise
        recent credentials of the stage are reused (plans)."""
        return self._session(stage, name, fresh)[0]

    def _session(self, stage: str, name: str, fresh: bool) -> tuple[dict[str, str], float | None]:
        account = self.catalog.account(stage)
        region = {"AWS_REGION": account.region, "AWS_DEFAULT_REGION": account.region}
        if not account.role_arn:
            return {**self.own_env, **region}, None
        if not fresh:
            with self._lock:
                cached = self._cache.get(stage)
            if cached and cached[0] - self.clock() > REUSE_MARGIN:
                return dict(cached[1]), cached[0]
        args = {"RoleArn": account.role_arn, "RoleSessionName": session_name(name),
                "DurationSeconds": self.session_seconds}
        if account.external_id:
            args["ExternalId"] = account.external_id
        try:
            config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20)
            sts = aws_clients.client("sts", account.region, config, self.own_env)
            creds = sts.assume_role(**args)["Credentials"]
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise AccountError(
                f"Cannot assume {account.role_arn} for stage `{stage}` ({err.get('Code', 'error')}: "
                f"{err.get('Message', '')[:200]}). Nothing was deployed. Check that the role trusts the bot's "
                "principal (and the external id), and that its maximum session lasts at least "
                f"{self.session_seconds} s (ROLLBACK_STEP_TIMEOUT + 5 min)."
            ) from exc
        except BotoCoreError as exc:
            raise AccountError(f"Cannot reach STS to assume {account.role_arn} for stage `{stage}` ({exc}). "
                               "Nothing was deployed; try again.") from exc
        env = {k: v for k, v in self.own_env.items() if k not in OWN_KEYS}
        env.update(region, AWS_ACCESS_KEY_ID=creds["AccessKeyId"], AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
                   AWS_SESSION_TOKEN=creds["SessionToken"])
        expires = _expiry(creds, self.clock())
        with self._lock:
            self._cache[stage] = (expires, env)
        return dict(env), expires

    def credentials(self, stage: str, name: str) -> Credentials:
        """A job's credentials for ``stage``, to hand to its runner: temporary, always. With a role, a fresh
        session of it; without one, a session of the bot's own principal (STS GetSessionToken), so a deploy
        never holds the bot's long-lived key. Where STS gives no session (the bot already runs on temporary
        credentials, an instance or task role), those are handed on as they are, and the note says so."""
        account = self.catalog.account(stage)
        if account.role_arn:
            env, expires = self._session(stage, name, fresh=True)
            return Credentials(aws=_aws(env), expires=expires,
                               note=f"{account.describe()}, session {session_name(name)}")
        region = {"AWS_REGION": account.region, "AWS_DEFAULT_REGION": account.region} if account.region else {}
        try:
            config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20)
            sts = aws_clients.client("sts", account.region or None, config, self.own_env)
            creds = sts.get_session_token(DurationSeconds=max(MIN_SESSION, self.session_seconds))["Credentials"]
        except (ClientError, BotoCoreError) as exc:
            why = exc.response.get("Error", {}).get("Code", "error") if isinstance(exc, ClientError) else str(exc)
            own = {**{k: v for k, v in _aws(self.own_env).items() if k != "AWS_PROFILE"},
                   **aws_clients.frozen_credentials(self.own_env)}
            return Credentials(aws={**own, **region}, expires=None,
                               note=f"the bot's own credentials: STS gave no session ({why[:120]})")
        aws = {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
               "AWS_SESSION_TOKEN": creds["SessionToken"], **region}
        return Credentials(aws=aws,
                           expires=_expiry(creds, self.clock()), note="a session of the bot's own credentials")


def _expiry(creds: dict, now: float) -> float:
    expiration = creds.get("Expiration")
    return expiration.timestamp() if hasattr(expiration, "timestamp") else now


def _aws(env: Mapping[str, str]) -> dict[str, str]:
    """The AWS variables of an environment that say who and where (not the endpoint, which the spec has)."""
    keep = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")
    return {k: env[k] for k in keep if env.get(k)}

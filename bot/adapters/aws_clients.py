"""boto3 clients that share one loader of botocore's service models, made from explicit settings.

A new boto3 Session loads and parses the service's model again (~0.1 s for S3), and a plan makes
several clients: clients here share the parsed models. Each client still gets a session of its own.
``env`` is the AWS part of the bot's settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION/AWS_DEFAULT_REGION, AWS_ENDPOINT_URL); what it does not
name comes from botocore's usual chain (profiles, an instance role). Creation is serialised because
the loader's cache is not thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import boto3
import botocore.session
from botocore.config import Config

_lock = threading.Lock()
_loader = None


def client(service: str, region: str | None = None, config: Config | None = None, env: Mapping[str, str] | None = None):
    global _loader
    env = env or {}
    with _lock:
        session = botocore.session.Session(profile=env.get("AWS_PROFILE") or None)
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
        boto = boto3.session.Session(
            botocore_session=session,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        )
        # AWS_ENDPOINT_URL_<SERVICE> before AWS_ENDPOINT_URL, as the AWS SDKs read them
        endpoint = env.get(f"AWS_ENDPOINT_URL_{service.upper()}") or env.get("AWS_ENDPOINT_URL") or None
        return boto.client(service, region_name=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
                           config=config, endpoint_url=endpoint)


def frozen_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The credentials ``env`` stands for (its keys, or what its profile or the instance role resolve to),
    as variables: for a job runner that is handed credentials and sees no profile of the bot's."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if env.get(k)}
    with _lock:
        creds = botocore.session.Session(profile=env.get("AWS_PROFILE") or None).get_credentials()
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    out = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        out["AWS_SESSION_TOKEN"] = frozen.token
    return out

"""boto3 clients that share one loader of botocore's service models.

A new boto3 Session loads and parses the service's model again (~0.1 s for S3), and a plan makes
several clients. Each client still gets a session of its own, so credentials and the endpoint are
read from the standard AWS variables as they are when it is made; only the parsed models are shared.
Creation is serialised because the loader's cache is not thread-safe.
"""

from __future__ import annotations

import threading

import boto3
import botocore.session
from botocore.config import Config

_lock = threading.Lock()
_loader = None


def client(service: str, region: str | None = None, config: Config | None = None):
    global _loader
    with _lock:
        session = botocore.session.Session()
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
        return boto3.session.Session(botocore_session=session).client(service, region_name=region, config=config)

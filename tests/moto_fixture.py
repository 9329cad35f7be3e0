"""moto's server on a free loopback port, with S3's conditional PUT made atomic as in real S3.

moto checks If-Match / If-None-Match and then writes, without a lock, so two racing writers can
both pass the check; real S3 never lets that happen. Serialising PutObject restores S3's
semantics, and our own code still has to send the conditions for concurrent publishes to land.
"""

from __future__ import annotations

import functools
import threading
import urllib.request

from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

_put_lock = threading.Lock()


def _make_put_atomic() -> None:
    if getattr(S3Response.put_object, "_atomic", False):
        return
    original = S3Response.put_object

    @functools.wraps(original)
    def put_object(self, *args, **kwargs):
        with _put_lock:
            return original(self, *args, **kwargs)

    put_object._atomic = True
    S3Response.put_object = put_object


class MotoServer:
    def __init__(self) -> None:
        _make_put_atomic()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://127.0.0.1:{port}"  # not localhost: see DESIGN.md

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        self._server.stop()

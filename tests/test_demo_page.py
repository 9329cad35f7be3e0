"""The demo's page server, without a browser: a tab that closes mid-wait leaves no traceback, and the
page has an icon."""

from __future__ import annotations

import socket
import time
import urllib.request

from bot.playground.slack import SlackStandIn
from bot.playground.web import ChannelPage
from tests.support.waiting import wait_for


def test_a_closed_tab_leaves_no_traceback_and_the_page_has_an_icon(capfd):
    standin = SlackStandIn()
    page = ChannelPage(standin, {}, ("C-OPS", "ops"), lambda: {"function": "f"}).start()
    try:
        port = int(page.url.rsplit(":", 1)[1].strip("/"))
        with urllib.request.urlopen(page.url + "favicon.ico", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "image/svg+xml" and resp.read().startswith(b"<svg")
        tab = socket.create_connection(("127.0.0.1", port))  # a long poll, waiting for the next change
        tab.sendall(f"GET /api/state?after={standin.revision} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.2)
        tab.close()  # the tab closes while the server waits
        standin._api_chat_postMessage({"channel": "C-OPS", "text": "hello"})
        with standin._changed:
            standin.revision += 1
            standin._changed.notify_all()
        wait_for(lambda: urllib.request.urlopen(page.url + "api/state", timeout=5).status == 200, 10, "the page")
        time.sleep(0.3)
        err = capfd.readouterr().err
        assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err
    finally:
        page.stop()
        standin.stop()

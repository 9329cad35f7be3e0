"""The demo's page on the Slack stand-in alone (no bot, no deploy): a tab that closes mid-wait leaves
no traceback, the page has an icon, and in Chromium only the message list scrolls."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from bot.playground.slack import SlackStandIn
from bot.playground.web import ChannelPage
from tests.support.browser import CHROMIUM, FLAGS
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


@pytest.fixture
def chromium_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by ./scripts/test")
    if not CHROMIUM.exists():
        pytest.skip("Chromium could not be installed (./scripts/test runs `apt-get install chromium` as root)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser.new_page(viewport={"width": 1400, "height": 900})
        browser.close()


def _post(standin: SlackStandIn, text: str, thread_ts: str | None = None) -> str:
    with standin._lock:
        ts = standin._api_chat_postMessage({"channel": "C-OPS", "text": text, "thread_ts": thread_ts})["ts"]
        standin._touch()
    return ts


def _newest_is_in_view(page) -> bool:
    return page.evaluate("""() => {
        const list = document.getElementById("messages").getBoundingClientRect();
        const all = document.querySelectorAll("#messages > .message");
        const last = all[all.length - 1].getBoundingClientRect();
        return last.bottom <= list.bottom + 1 && last.top >= list.top - 1; }""")


@pytest.mark.browser
def test_only_the_message_list_scrolls_and_it_follows_new_messages(chromium_page):
    standin = SlackStandIn()
    page = ChannelPage(standin, {}, ("C-OPS", "ops"), lambda: {"function": "f", "version": "v3"}).start()
    try:
        first = _post(standin, "deploy card")
        standin.files.append({"id": "F1", "filename": "rollback-job-1.log", "length": 11, "channel": "C-OPS",
                              "thread_ts": first, "content": b"<b>line</b>\n"})
        for n in range(29):
            _post(standin, f"message {n + 1}")
        chromium_page.goto(page.url)
        chromium_page.locator(".message", has_text="message 29").wait_for(timeout=10_000)
        height = chromium_page.evaluate("[document.documentElement.scrollHeight, window.innerHeight]")
        assert height[0] == height[1] == 900  # the page never grows: the list scrolls inside it
        assert _newest_is_in_view(chromium_page)
        assert chromium_page.locator("#composer").is_visible() and chromium_page.locator(".panel h2").first.is_visible()
        assert chromium_page.locator("#composer").bounding_box()["y"] > 800  # the typing box at the bottom

        _post(standin, "message 30")  # a new message arrives: the list follows it
        chromium_page.locator(".message", has_text="message 30").wait_for(timeout=10_000)
        assert _newest_is_in_view(chromium_page)

        chromium_page.evaluate("document.getElementById('messages').scrollTop = 0")  # reading older ones
        _post(standin, "message 31")
        chromium_page.locator(".message", has_text="message 31").wait_for(timeout=10_000)
        assert chromium_page.evaluate("document.getElementById('messages').scrollTop") == 0  # left where it was

        # the job's log opens from the thread, as text
        chromium_page.locator(".message", has_text="deploy card").locator("button.thread-toggle").click()
        with chromium_page.context.expect_page() as opened:
            chromium_page.locator("a.file", has_text="rollback-job-1.log").click()
        log = opened.value
        log.wait_for_load_state()
        assert log.locator("body").inner_text().strip() == "<b>line</b>"
    finally:
        page.stop()
        standin.stop()


def test_another_site_cannot_make_ana_or_bo_act():
    """A page on another origin posts a form (text/plain, no preflight) or a script fetch at the demo:
    nothing is typed or clicked in anyone's name. The page's own JSON requests still work."""
    typed: list[str] = []

    class Ana:
        name = "Ana"
        def command(self, text):
            typed.append(text)
            return 200

    standin = SlackStandIn()
    page = ChannelPage(standin, {"U-ANA": Ana()}, ("C-OPS", "ops"), lambda: {"function": "f"}).start()
    body = b'{"user": "U-ANA", "text": "/rollback prod previous"}'

    def post(headers: dict) -> int:
        request = urllib.request.Request(page.url + "api/command", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert post({"Content-Type": "text/plain", "Origin": "http://evil.example"}) == 403  # a form
        assert post({"Content-Type": "application/json", "Origin": "http://evil.example"}) == 403
        assert post({"Content-Type": "text/plain"}) == 403  # no preflight without JSON
        assert post({"Content-Type": "application/json", "Host": "evil.example"}) == 403  # DNS rebinding
        assert typed == []
        assert post({"Content-Type": "application/json", "Origin": page.url.rstrip("/")}) == 200
        assert typed == ["prod previous"]
    finally:
        page.stop()
        standin.stop()

"""`rollback-bot demo` as a new user meets it: the real command, its page in Debian's Chromium
(driven by Playwright, no browser download), a rollback watched in the page, then Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.adapters.store import Store
from bot.core.jobs import Job
from bot.slack.blocks import help_blocks, progress_blocks
from tests.support.browser import CHROMIUM, FLAGS
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.e2e]  # the demo deploys with the real Serverless CLI


class Demo:
    def __init__(self, proc: subprocess.Popen, url: str, data: Path, output: list[str]):
        self.proc, self.url, self.data, self.output = proc, url, data, output


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed; ./scripts/test installs them (apt-get install nodejs npm)")
    if not CHROMIUM.exists():
        pytest.skip("Chromium could not be installed (./scripts/test runs `apt-get install chromium` as root)")
    data = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLBACK_", "SLACK_", "AWS_"))}
    # Started as a shell started in the background would: SIGINT ignored. Ctrl-C must work anyway.
    proc = subprocess.Popen([sys.executable, "-m", "bot", "demo", "--port", "0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True,  # its own group, as a terminal gives it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    url, deadline = None, time.monotonic() + 600
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        output.append(line)
        if found := re.search(r"demo is ready: (http://127\.0\.0\.1:\d+/)", line):
            url = found.group(1)
    threading.Thread(target=lambda: [output.append(line) for line in iter(lines.get, None)], daemon=True).start()
    assert url, "the demo never became ready:\n" + "".join(output)
    yield Demo(proc, url, data, output)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(demo):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by ./scripts/test")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(demo.url)
    yield page
    page.close()


def type_as(page, user: str, text: str) -> None:
    page.click(f"button.user[data-user='{user}']")
    page.fill("#composer", text)
    page.press("#composer", "Enter")


def card_with_header(page, text: str, timeout: float = 60):
    card = page.locator(".message", has=page.locator(".bk-header", has_text=text)).last
    card.wait_for(timeout=timeout * 1000)
    return card


def test_roll_back_in_the_browser_with_two_people(demo, page, screenshots):
    # CI deployed hello-service v2 then v3, and orders v1 then v2, in prod's own account: the channel shows
    # the notifications (each older one struck through as no longer live), the panel shows v3 running
    page.wait_for_selector("#lambda-version[data-version='v3']", timeout=30_000)
    assert page.locator(".message", has_text="is now running").count() == 4
    assert page.locator(".message", has_text="No longer live").count() == 2
    assert page.locator(".message", has_text="orders in prod is now running").count() == 2  # names the service
    assert "account 111111111111" in page.inner_text("#lambda-function")

    # the sample's alarm trips after the deploy: the watch posts it with a way back
    page.click("#trip-alarm")
    alert = page.locator(".message", has_text="went into ALARM").last
    alert.wait_for(timeout=30_000)
    assert "hello-service-prod-errors went into ALARM" in alert.inner_text()  # the stack's own alarm
    assert alert.locator("button", has_text="Roll back to previous").is_visible()
    notification = page.locator(".message", has_text="is now running").filter(
        has_text="demo-v3", has_not_text="No longer live").first  # v3's own deploy notification
    assert notification.locator("button.thread-toggle", has_text="1 reply").count() == 1  # in its thread too

    type_as(page, "U-ANA", "/rollback prod")  # a line per service
    overview = page.locator(".message.ephemeral", has_text="2 services").last
    overview.wait_for(timeout=30_000)
    assert overview.locator("button", has_text="Builds").count() == 2
    assert "account 111111111111 (role rollback-deployer)" in overview.inner_text()

    type_as(page, "U-ANA", "/rollback hello-service prod previous")
    card = card_with_header(page, "Roll back hello-service in prod to")
    text = card.inner_text()
    assert "AWS: account 111111111111 (role rollback-deployer), us-east-1" in text
    assert "Say v3: the release that paged on-call" in text  # the commit undone
    assert "plugin set unchanged" in text and "Requested by @Ana (on call)" in text
    assert card.locator("button.bk-button.primary", has_text="Approve").is_visible()
    assert card.locator("button.bk-button.danger", has_text="Cancel").is_visible()
    page.screenshot(path=str(screenshots / "demo-plan.png"))

    # prod needs a second person: Ana's own approval is refused, and only she sees why
    card.locator("button", has_text="Approve").click()
    refusal = page.locator(".message.ephemeral", has_text="needs a second person")
    refusal.wait_for(timeout=30_000)
    assert "Only visible to you" in refusal.inner_text()
    page.click("button.user[data-user='U-BO']")
    assert page.locator(".message.ephemeral", has_text="needs a second person").count() == 0

    card.locator("button", has_text="Approve").click()
    done = card_with_header(page, "Rolled back: hello-service prod", timeout=240)
    assert done.inner_text().count("✅") >= 6  # the header and the five steps
    page.wait_for_selector("#lambda-version[data-version='v2']", timeout=30_000)
    done.locator("button.thread-toggle").click()
    assert "Service deployed to stack hello-service-prod" in page.locator(".thread").inner_text()
    text = done.inner_text()
    assert "Undoes 1 commit" in text and "approved by @Bo" in text  # the card keeps the plan and who
    page.screenshot(path=str(screenshots / "demo-done.png"))
    done.locator("button.thread-toggle").click()  # close the thread again

    # the alarm after the rollback: the live build came from the bot, so no new alarm post (no loops);
    # the panel says why, and the card ends with the settle verdict
    page.click("#trip-alarm")
    toast = page.locator("#toast.shown")
    toast.wait_for(timeout=10_000)
    assert "came from a rollback, so no alarm post" in toast.inner_text()
    done.locator(".bk-context", has_text="after the rollback").wait_for(timeout=60_000)
    assert "hello-service-prod-errors still in ALARM 20 s after the rollback" in done.inner_text()
    assert page.locator(".message", has_text="went into ALARM").count() == 1  # still only the one before

    # a rollback cancelled while it deploys: the card says who stopped it and what runs now
    type_as(page, "U-ANA", "/rollback hello-service prod demo-v1")
    card = card_with_header(page, "Roll back hello-service in prod to")
    page.click("button.user[data-user='U-BO']")
    card.locator("button", has_text="Approve").click()
    running = card_with_header(page, "Rolling back: hello-service prod")
    wait_for(lambda: _processes_under(demo.data, "serverless"), 240, "the deploy to start")
    running.locator("button", has_text="Cancel").click()
    cancelled = card_with_header(page, "Rollback cancelled", timeout=120)
    text = cancelled.inner_text()
    assert "Cancelled by @Bo" in text and "Lambda runs" in text
    page.wait_for_selector("#lambda-version[data-version='v2']", timeout=30_000)  # nothing changed
    cancelled.locator("button.thread-toggle").click()
    with page.context.expect_page() as opened:
        cancelled.locator("a.file", has_text="rollback-job-").click()
    opened.value.wait_for_load_state()
    log = opened.value.locator("body").inner_text()  # the job's full log, as text
    assert "sha256 verified" in log and "serverless deploy --stage prod --package" in log
    opened.value.close()
    cancelled.evaluate("card => card.scrollIntoView({block: 'start'})")  # its header at the top
    page.screenshot(path=str(screenshots / "demo-cancelled.png"))

    # the whole app back to the first commit: both services, in one phase, with one approval
    import git

    first = next(git.Repo(demo.data / "repo").iter_commits("main", reverse=True)).hexsha
    type_as(page, "U-ANA", f"/rollback prod {first[:8]}")
    app = card_with_header(page, "Roll back the app in prod to")
    assert "2 of 2 services move" in app.inner_text() and "Order (dependents first)" in app.inner_text()
    page.click("button.user[data-user='U-BO']")
    app.locator("button", has_text="Approve").click()
    done = card_with_header(page, "Rolled back the app", timeout=240)
    assert done.inner_text().count("✅") >= 3  # the header and both services
    page.wait_for_selector("#lambda-version[data-version='v1']", timeout=30_000)


def test_the_page_renders_what_the_bot_sends(demo, page):
    page.wait_for_selector("#lambda-version[data-version]", timeout=30_000)
    type_as(page, "U-ANA", "/rollback hello-service prod")
    listing = page.locator(".message.ephemeral", has_text="demo-v1").last
    listing.wait_for(timeout=30_000)
    assert listing.locator("button", has_text="Roll forward to this").count() == 2  # v1 is live since the app rollback
    type_as(page, "U-ANA", "/rollback help")
    helped = page.locator(".message.ephemeral", has_text="Examples").last
    helped.wait_for(timeout=30_000)
    assert helped.locator("b", has_text="Examples").count() == 1  # *Examples* is bold
    assert helped.locator("code", has_text="/rollback <service> <stage>").count() >= 1
    assert page.locator(".bk-unsupported").count() == 0  # every block the bot sent has a renderer

    # a failure card, from the same builder the bot uses, with a hostile commit message in its log
    failed = {"id": 9, "state": "failed", "stage": "prod", "target_commit": "c" * 40, "requested_by": "U-ANA",
              "approved_by": "U-BO", "started": 100.0, "finished": 130.0,
              "reason": "deploy: `serverless deploy` exited with code 1"}
    steps = {"restore": ("done", 0.1), "checkout": ("done", 0.2), "install": ("done", 0.0),
             "deploy": ("failed", 29.0)}
    blocks = progress_blocks(Job.from_row(failed), steps, ["Error: <img src=x onerror=window.pwned=1> & more"], 130.0)
    html = page.evaluate("""([blocks, users]) => {
        const root = window.BlockKit.renderBlocks(blocks, users);
        document.body.appendChild(root);
        return root.innerHTML; }""", [blocks, {"U-ANA": "Ana", "U-BO": "Bo"}])
    assert "❌ Rollback failed: prod → ccccccc" in html
    assert "<b>Why:</b>" in html and "<code>serverless deploy</code>" in html
    assert "<pre>Error: &lt;img src=x onerror=window.pwned=1&gt; &amp; more</pre>" in html
    assert page.evaluate("window.pwned === undefined")
    assert "approved by <span class=\"mention\">@Bo</span>" in html
    help_html = page.evaluate("(b) => window.BlockKit.renderBlocks(b, {}).innerHTML", help_blocks(["prod"]))
    assert 'class="bk-context"' in help_html and "<code>prod</code>" in help_html


def test_ctrl_c_during_a_rollback_stops_everything(demo, page):
    page.wait_for_selector("#lambda-version[data-version]", timeout=30_000)
    type_as(page, "U-ANA", "/rollback hello-service prod demo-v1")
    card = card_with_header(page, "Roll back hello-service in prod to")
    page.click("button.user[data-user='U-BO']")
    card.locator("button", has_text="Approve").click()
    running = card_with_header(page, "Rolling back: hello-service prod")  # the live checklist, with its Cancel button
    assert running.locator("button.bk-button.danger", has_text="Cancel").is_visible()
    assert "⏳" in running.inner_text()
    # Ctrl-C while the deploy runs: serverless is in its own process group, so only the bot can stop it
    wait_for(lambda: _processes_under(demo.data, "serverless"), 240, "the deploy to start")
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(60) == 0, "".join(demo.output)
    assert wait_for(lambda: not _processes_under(demo.data), 10, "no process left") is True
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(demo.url, timeout=5)
    # the bot stopped the deploy itself before it went: the job is recorded as cancelled, the lock released
    store = Store(demo.data / "run" / "rollback-bot.sqlite")
    assert [j.state for j in store.jobs(service="hello-service", app_parts=False) if j.state != "pending"] == [
        "cancelled", "cancelled", "succeeded"]
    assert store.locks() == []


def _processes_under(folder: Path, named: str = "") -> list[str]:
    """Processes whose working directory or command line is inside ``folder`` (e.g. a deploy)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(str(folder)) or str(folder) in cmd) and named in cmd:
            found.append(json.dumps({"pid": proc.name, "cwd": cwd, "cmd": cmd[:200]}))
    return found

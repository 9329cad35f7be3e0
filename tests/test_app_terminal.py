"""App rollbacks at a terminal and across processes: the terminal's run and history, Ctrl-C, a Slack
bot cancelling a terminal's run, and a bot killed in the middle. The repository and its fixtures are
test_app's (three services, an export and an import)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading

from tests.support.app_fixtures import code, live
from tests.support.fast_service import hold_file
from tests.support.waiting import wait_for


def test_the_terminal_rolls_the_app_back_and_history_shows_it_as_one_entry(app_env, repo, lam):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bot", *args], env=app_env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    refused = cli("rollback", "prod", repo.commits["c1"][:8])  # no terminal to confirm with
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert "Order (dependents first): 1. worker → 2. api, billing" in refused.stdout
    refused = cli("rollback", "prod", repo.commits["c1"][:8], "--yes", "--by", "ana")
    assert refused.returncode == 1 and "not an approver for `billing` in `prod`" in refused.stderr  # its team
    done = cli("rollback", "prod", repo.commits["c1"][:8], "--yes", "--by", "cy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[worker] succeeded" in done.stdout and "every service runs its target" in done.stdout
    assert all(live(lam, svc) == code(repo, svc, "v1") for svc in ("api", "worker", "billing"))
    history = cli("history", "prod").stdout
    assert "the app in prod" in history and "      worker: succeeded" in history
    entries = json.loads(cli("history", "prod", "--json").stdout)
    assert len(entries) == 1 and sorted(p["to"]["build"] for p in entries[0]["services"]) == [
        "api-v1", "billing-v1", "worker-v1"]


@contextlib.contextmanager
def terminal_app_rollback(app_env, repo, tmp_path):
    """`rollback-bot rollback prod <c1> --yes` in a terminal of its own, held in worker's deploy (phase 1)
    until the block ends. Yields the process and its output lines (a reader keeps adding them)."""
    held = hold_file("hold-the-deploy")
    held.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "rollback", "prod", repo.commits["c1"][:8], "--yes",
                             "--by", "cy"], env={**app_env, "SLS_TEST_DEPLOY_WAIT_FOR": str(held)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("[worker] running" in line for line in out), 60, "worker's deploy to start")
        yield proc, out
    finally:
        held.unlink(missing_ok=True)
        proc.kill()
        reader.join(timeout=5)


def test_ctrl_c_in_the_terminal_starts_no_further_phase_and_releases_every_lock(app_env, repo, lam, tmp_path):
    with terminal_app_rollback(app_env, repo, tmp_path) as (proc, out):
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    said, err = "".join(out), proc.stderr.read()
    assert proc.returncode == 1, said + err
    assert "cancelling: no further phase starts" in err and "cancelled" in err
    assert "[api] waiting for its phase" in said and "[worker] running" in said
    assert "[worker] cancelled" in said and "[api] skipped" in said and "[billing] skipped" in said
    assert all(live(lam, svc) == code(repo, svc, "v2") for svc in ("api", "worker", "billing"))
    with sqlite3.connect(tmp_path / "bot" / "rollback-bot.sqlite") as db:  # no lock outlives the terminal
        assert db.execute("SELECT service, stage FROM stage_locks").fetchall() == []


def test_a_bot_killed_mid_app_rollback_is_recovered_with_who_is_where_on_restart(app, app_env, repo, lam, tmp_path):
    with terminal_app_rollback(app_env, repo, tmp_path) as (bot, _):
        bot.send_signal(signal.SIGKILL)  # the machine went away: nothing of the bot runs its cleanup
        bot.wait(timeout=30)
        ws = app()  # the bot starts again on the same data
        said = next(m for m in ws.standin.messages["C-DEPLOYS"]  # start-up recovers before serving anyone
                    if "App rollback 1 of `prod` was interrupted by a restart" in m["text"])
    assert "interrupted: worker (" in said["text"] and "unchanged (not started): api, billing" in said["text"]
    job = ws.service.store.job(1)
    assert job.state == "interrupted" and "Check each service's stack" in job.reason
    parts = {p.service: p.state for p in ws.service.store.parts_of(1)}
    assert parts == {"worker": "interrupted", "api": "skipped", "billing": "skipped"}
    assert all(ws.service.store.lock_of(ws.service.key("prod", s)) is None for s in parts)
    assert all(live(lam, svc) == code(repo, svc, "v2") for svc in ("api", "worker", "billing"))
    # nothing is stuck: the same rollback can be asked for and runs
    card = ws.posts_card(ws.ana, f"prod {repo.commits['c1'][:8]}")
    ws.cy.click(card.first, "approve")
    card.becomes("✅")
    assert all(live(lam, svc) == code(repo, svc, "v1") for svc in ("api", "worker", "billing"))


def test_slack_cancels_an_app_rollback_that_a_terminal_runs(app, app_env, repo, lam, tmp_path):
    with terminal_app_rollback(app_env, repo, tmp_path) as (terminal, _):
        ws = app()  # the Slack bot on the same machine and data, started while the terminal runs
        assert ws.service.store.job(1).state == "running"  # a live process's run is not "recovered"
        said = ws.says(ws.bo, "cancel prod")
        assert f"the rollback-bot process that runs it (pid {terminal.pid})" in said
        terminal.wait(timeout=60)
    assert terminal.returncode == 1
    assert "app job 1 cancelled: cancelled: worker; unchanged (not started): api, billing" in terminal.stderr.read()
    assert ws.service.store.job(1).cancelled_by == "U-BO"
    assert all(live(lam, svc) == code(repo, svc, "v2") for svc in ("api", "worker", "billing"))

"""No lock sticks, nothing hangs, nothing is claimed that did not happen: the engine with real git,
moto, sqlite and the fast deploy script, and real faults (a full database, S3 answering 503, a git
server that never answers, a pid that was reused)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from bot.adapters.artifacts import ArtifactError, ArtifactStore
from bot.adapters.source import SourceError, SourceRepo
from bot.adapters.store import StageBusy
from bot.core.actor import Actor
from bot.core.keys import StageKey
from tests.conftest import BUCKET, SERVICE, fast_code, live_code
from tests.support.fast_service import fast_package, hold_file
from tests.support.faulty_proxy import FaultyProxy
from tests.support.waiting import wait_for

PROD = StageKey(SERVICE, "prod")


@pytest.fixture
def proxy(moto_server, fast_prod):
    p = FaultyProxy(moto_server.url)
    yield p
    p.stop()


def through(engine, proxy) -> None:
    """Send the engine's S3 traffic (only that) through the fault-injecting proxy."""
    s3 = boto3.session.Session().client("s3", endpoint_url=proxy.url, config=engine.artifacts.s3.meta.config)
    engine.artifacts.s3 = s3
    engine.jobs.artifacts.s3 = s3


def test_a_full_database_during_a_job_still_releases_the_lock(fast_prod, make_fast_engine, tmp_path):
    hold = hold_file("hold")
    hold.touch()
    engine = make_fast_engine(SLS_TEST_DEPLOY_WAIT_FOR=str(hold))
    plan = engine.plan("prod", "previous")
    job_id = engine.jobs.start(plan, "U-ANA", "U-BO")
    wait_for(lambda: any(e["step"] == "deploy" for e in engine.store.events(job_id)), 30, "the deploy")
    pages = engine.store.db.execute("PRAGMA page_count").fetchone()[0]
    engine.store.db.execute(f"PRAGMA max_page_count={pages}")  # sqlite is now really full
    hold.unlink()
    engine.jobs.wait(job_id, timeout=60)
    assert engine.store.lock_of(PROD) is None
    # the next bot start (same process, same pid) does not take the job for a live one
    engine.store.db.execute("PRAGMA max_page_count=1073741823")
    again = make_fast_engine()
    again.jobs.recover()
    assert again.store.job(job_id).state in ("succeeded", "interrupted")
    assert again.store.lock_of(PROD) is None


def test_s3_failing_when_the_job_starts_refuses_it_before_anything_runs(fast_prod, proxy, fast_service):
    """Without S3 the stage's lease cannot be taken, and without it another replica could deploy too."""
    through(fast_prod, proxy)
    plan = fast_prod.plan("prod", "previous")
    proxy.fail(-1)  # S3 is gone from here on
    with pytest.raises(StageBusy, match="could not take the stage's lease .*Nothing was deployed"):
        fast_prod.jobs.start(plan, "U-ANA", "U-BO")
    job = fast_prod.store.jobs(limit=1)[0]
    assert job.state == "refused" and "lease" in job.reason
    assert fast_prod.store.lock_of(PROD) is None
    assert live_code() == fast_code(fast_service, "v2")  # nothing deployed


def test_s3_failing_during_the_download_fails_the_job_cleanly(fast_prod, proxy, fast_service):
    through(fast_prod, proxy)
    plan = fast_prod.plan("prod", "previous")
    proxy.fail(-1, only=("GET", ".zip"))  # the package cannot be downloaded; the rest of S3 works
    job_id = fast_prod.jobs.start(plan, "U-ANA", "U-BO")
    job = fast_prod.jobs.wait(job_id, timeout=120)
    assert job.state == "failed" and job.reason.startswith("restore: S3 kept failing")
    assert fast_prod.store.lock_of(PROD) is None
    assert fast_prod.leases.current("prod") is None  # the lease in S3 is let go too
    assert live_code() == fast_code(fast_service, "v2")  # nothing deployed


def test_when_index_json_cannot_be_written_the_job_says_ci_is_not_frozen_and_retries_until_it_lands(
        fast_prod, proxy, fast_service):
    through(fast_prod, proxy)
    plan = fast_prod.plan("prod", "previous")
    seen = []
    fast_prod.jobs.listeners.append(lambda job_id, event: seen.append(event))
    proxy.fail(-1, only=("PUT", "index.json"))  # reads work; every write of the index fails
    job_id = fast_prod.jobs.start(plan, "U-ANA", "U-BO")
    job = fast_prod.jobs.wait(job_id, timeout=120)
    assert job.state == "succeeded" and job.recorded == 0
    assert "CI is NOT frozen" in job.reason
    assert live_code() == fast_code(fast_service, "v1")  # the deploy itself worked
    assert fast_prod.artifacts.read_index("prod").freeze is None
    assert fast_prod.store.lock_of(PROD) is None

    proxy.fail(0)  # S3 recovers: the background retry lands and says so
    wait_for(lambda: any(e.step == "index" and e.status == "recorded" for e in seen), 30, "the retried write")
    index = ArtifactStore(fast_prod.artifacts.s3, BUCKET, SERVICE, "rollback/").read_index("prod")
    assert index.freeze is not None and index.live.commit == fast_service.commits["v1"]
    assert index.find(fast_service.commits["v2"], "b-v2").bad is not None
    assert fast_prod.store.job(job_id).recorded == 1 and index.in_use == []


def test_recovery_never_signals_a_process_that_only_reuses_a_recorded_runners_pid(fast_prod, make_fast_engine):
    store = fast_prod.store
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        reused = store.create_job(stage="dev", target_commit="a" * 40, state="running", host=socket.gethostname(),
                                  pid=999_999, started=time.time(), child_pid=bystander.pid, child_start="1")
        ours = store.create_job(stage="qa", target_commit="a" * 40, state="running", host=socket.gethostname(),
                                pid=999_999, started=time.time(), child_pid=leftover.pid,
                                child_start=_start_of(leftover.pid))
        make_fast_engine().jobs.recover()
        assert store.job(reused).state == "interrupted" and store.job(ours).state == "interrupted"
        assert leftover.wait(timeout=10) is not None  # the dead bot's runner, still there: stopped
        assert bystander.poll() is None, "a process that merely got the recorded pid was signalled"
    finally:
        bystander.kill()
        leftover.kill()


def test_recovery_knows_its_own_pid_and_a_reused_one_and_removes_work_folders(fast_prod, make_fast_engine):
    store = fast_prod.store
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        jobs = {}
        for name, pid, start in (("own pid", os.getpid(), fast_prod.jobs.pid_start),
                                 ("reused pid", other.pid, "1")):  # alive, but it started at another time
            jobs[name] = store.create_job(stage=name.replace(" ", "-"), target_commit="a" * 40, state="running",
                                          host=socket.gethostname(), pid=pid, pid_start=start, started=time.time())
            store.acquire_lock(StageKey(SERVICE, name.replace(" ", "-")), jobs[name], "U-BO")
            (fast_prod.settings.data_dir / "jobs" / str(jobs[name])).mkdir(parents=True)
        alive = store.create_job(stage="dev", target_commit="a" * 40, state="running", host=socket.gethostname(),
                                 pid=other.pid, pid_start=_start_of(other.pid), started=time.time())
        store.acquire_lock(StageKey(SERVICE, "dev"), alive, "U-BO")
        fresh = make_fast_engine()  # a restarted bot: same pid as the one that ran "own pid"
        fresh.jobs.recover()
        fresh.jobs.idle()
        for job_id in jobs.values():
            assert fresh.store.job(job_id).state == "interrupted"
            assert not (fast_prod.settings.data_dir / "jobs" / str(job_id)).exists()
        assert fresh.store.lock_of(StageKey(SERVICE, "own-pid")) is None
        assert fresh.store.lock_of(StageKey(SERVICE, "reused-pid")) is None
        assert fresh.store.job(alive).state == "running"
        assert fresh.store.lock_of(StageKey(SERVICE, "dev")) is not None
    finally:
        other.kill()


def _start_of(pid: int) -> str:
    from bot.engine.runner import process_start

    return process_start(pid)


def test_cancel_of_a_job_whose_bot_died_releases_the_lock_and_says_so(fast_prod):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_id = fast_prod.store.create_job(stage="prod", target_commit="a" * 40, state="running",
                                        host=socket.gethostname(), pid=dead.pid, started=time.time())
    fast_prod.store.acquire_lock(PROD, job_id, "U-BO")
    from bot.core.policy import Policy
    from bot.engine.service import RollbackService

    service = RollbackService(fast_prod, Policy())
    said = service.cancel_running(service.key("prod"), Actor.in_slack("U-BO", None))
    assert "bot process is gone: the job is marked interrupted and the stage's lock released" in said
    assert fast_prod.store.lock_of(PROD) is None and fast_prod.store.job(job_id).state == "interrupted"


def test_a_git_server_that_never_answers_is_given_up_on(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections, never says a word
    try:
        repo = SourceRepo(f"http://127.0.0.1:{silent.getsockname()[1]}/org/hello.git", tmp_path / "m.git", timeout=2)
        started = time.monotonic()
        with pytest.raises(SourceError, match="cannot fetch http://127.0.0.1"):
            repo.fetch()
        assert time.monotonic() - started < 20
    finally:
        silent.close()


def test_a_slow_fetch_for_a_plan_never_holds_up_a_running_jobs_checkout(fast_prod, fast_service, tmp_path):
    source = fast_prod.source
    source.fetch()
    done = threading.Event()
    with source._fetch_lock:  # a plan's fetch is stuck on the network
        threading.Thread(target=lambda: (source.checkout(fast_service.commits["v1"], tmp_path / "wt"), done.set()),
                         daemon=True).start()
        assert done.wait(20), "the checkout waited for the fetch"


def test_a_package_built_for_another_stage_is_never_deployed(fast_prod, fast_service, tmp_path):
    staging = fast_package(tmp_path / "staging-pkg", "v1", stage="staging")
    fast_prod.artifacts.publish("prod", fast_service.commits["v1"], staging, build_id="from-staging")
    with pytest.raises(ArtifactError, match="built for stage staging, not prod"):
        fast_prod.plan("prod", "from-staging")
    assert live_code() == fast_code(fast_service, "v2")


def test_planning_reads_the_template_not_the_package(fast_prod, fast_service, tmp_path):
    big = fast_package(tmp_path / "big", "v1", extra={"blob.bin": os.urandom(20 * 1024 * 1024)})
    fast_prod.artifacts.publish("prod", fast_service.commits["v1"], big, build_id="big")
    received = []
    fast_prod.artifacts.s3.meta.events.register(
        "after-call.s3.GetObject",
        lambda http_response, **kw: received.append(int(http_response.headers.get("content-length", 0))))
    plan = fast_prod.plan("prod", "big")
    assert plan.target.size > 20 * 1024 * 1024 and plan.template is not None
    assert sum(received) < 1024 * 1024, f"planning downloaded {sum(received)} bytes"


def test_a_failed_or_unverified_deploy_says_which_build_lambda_runs_now(fast_prod, make_fast_engine, fast_service):
    c = fast_service.commits
    failing = make_fast_engine(SLS_TEST_DEPLOY_FAIL="1")
    job = failing.jobs.wait(failing.jobs.start(failing.plan("prod", "previous"), "U-ANA", "U-BO"), timeout=60)
    assert job.state == "failed" and job.reason.startswith("deploy: ")
    assert f"Lambda runs {c['v2'][:7]} (build b-v2, live before the job): check it" in job.reason

    # a deploy that "succeeds" without deploying: verify fails, and the card still says what runs
    idle = make_fast_engine(ROLLBACK_DEPLOY_COMMAND=f"{sys.executable} -c pass")
    job = idle.jobs.wait(idle.jobs.start(idle.plan("prod", "previous"), "U-ANA", "U-BO"), timeout=60)
    assert job.reason.startswith("verify: ") and f"Lambda runs {c['v2'][:7]} (build b-v2" in job.reason

    # something else entirely runs: none of the builds compared
    from tests.support.deploy_script import deploy_package

    deploy_package(fast_package(fast_service.work.path.parent / "odd", "hotfix-by-hand"))
    job = failing.jobs.wait(failing.jobs.start(failing.plan("prod", "previous"), "U-ANA", "U-BO"), timeout=60)
    assert "Lambda runs none of the stored builds compared" in job.reason


def _cancelled_run(tmp_path, script: str, grace: float, monkeypatch) -> tuple[threading.Thread, list, Path]:
    """run_command on a Python child that writes its pid and its group's, cancelled once it is running."""
    from bot.engine import pipeline

    monkeypatch.setattr(pipeline, "KILL_GRACE", grace)
    cancel, outcome = threading.Event(), []
    pids = tmp_path / "pids"

    def run() -> None:
        try:
            pipeline.run_command("deploy", [sys.executable, "-c", script, str(pids)], tmp_path, dict(os.environ),
                                 lambda line: None, timeout=120, cancel=cancel)
        except pipeline.Cancelled as exc:
            outcome.append(exc.reason)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: pids.exists() and pids.read_text().count("\n") >= 1, 10, "the command to start")
    cancel.set()
    return t, outcome, pids


def test_a_cancelled_deploy_that_stops_at_once_is_not_held_for_the_kill_grace_period(tmp_path, monkeypatch):
    # A deploy exits on SIGTERM. Its group used to look alive until the grace period ran out (the
    # leader, not yet reaped, was a zombie), so every cancel of a running deploy took 5 s more.
    script = ("import os, sys, time; open(sys.argv[1], 'w').write(f'{os.getpid()}\\n'); time.sleep(60)")
    t, outcome, _ = _cancelled_run(tmp_path, script, grace=60, monkeypatch=monkeypatch)
    t.join(timeout=15)  # far below the 60 s grace: only a wait on a dead process could reach it
    assert not t.is_alive(), "cancel waited for the kill grace period although the deploy had stopped"
    assert outcome == ["cancelled while running; its processes were stopped"]


def test_a_cancelled_deploy_that_ignores_sigterm_is_killed_with_its_children(tmp_path, monkeypatch):
    script = ("import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
              "open(sys.argv[1], 'w').write(f'{os.getpid()}\\n{child.pid}\\n'); time.sleep(60)")
    t, outcome, pids = _cancelled_run(tmp_path, script, grace=0.5, monkeypatch=monkeypatch)
    t.join(timeout=15)
    assert not t.is_alive() and outcome == ["cancelled while running; its processes were stopped"]
    leader, child = (int(p) for p in pids.read_text().split())

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        state = Path(f"/proc/{pid}/stat")
        return state.exists() and state.read_text().split(")")[1].split()[0] == "Z"  # dead, awaiting its parent

    wait_for(lambda: gone(child), 10, "the deploy's own child to be killed")
    assert gone(leader)


def _terminal_rollback(fast_service, aws_env, tmp_path):
    """`rollback-bot rollback prod previous` in a terminal of its own, its deploy held until the test
    lets go; returns the process, its output so far, the data dir, the environment and the release."""
    from tests.support.fast_service import DEPLOY_COMMAND
    from tests.support.serverless_fixture import sls_env

    held = hold_file("hold-the-deploy")
    held.write_text("")
    data = tmp_path / "terminal"
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
           "ROLLBACK_REPO": str(fast_service.origin), "ROLLBACK_DATA_DIR": str(data),
           "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, "SLS_TEST_DEPLOY_WAIT_FOR": str(held),
           "SLS_TEST_DEPLOY_PRINT": "deploy under way"}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "rollback", "prod", "previous", "--yes", "--by", "ana"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    wait_for(lambda: any("deploy under way" in line for line in out), 60, "the deploy to start")
    return proc, out, data, env, lambda: held.unlink(missing_ok=True)


def _stopped_cleanly(fast_prod, fast_service, data, by: str) -> None:
    from bot.adapters.store import Store

    assert live_code() == fast_code(fast_service, "v2")
    job = Store(data / "rollback-bot.sqlite").jobs()[0]
    assert job.state == "cancelled" and job.cancelled_by == by
    assert Store(data / "rollback-bot.sqlite").lock_of(PROD) is None
    assert fast_prod.artifacts.read_index("prod").in_use == []  # the build is no longer held for the job


def test_ctrl_c_during_a_terminal_rollback_stops_the_deploy_and_releases_the_stage(
        fast_prod, fast_service, aws_env, tmp_path):
    proc, out, data, _, release = _terminal_rollback(fast_service, aws_env, tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        release()
        proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 1, "".join(out) + err
    assert "cancelling: stopping the job's processes" in err
    assert "cancelled" in err and "Lambda runs" in err  # what runs now, said before the terminal returns
    _stopped_cleanly(fast_prod, fast_service, data, "ana")


def test_rollback_bot_cancel_in_another_terminal_stops_a_rollback_running_elsewhere(
        fast_prod, fast_service, aws_env, tmp_path):
    # Slack is down; the rollback runs in someone's terminal (or in the Slack bot's process) on this host
    proc, out, data, env, release = _terminal_rollback(fast_service, aws_env, tmp_path)
    try:
        status = subprocess.run([sys.executable, "-m", "bot", "status"], env=env, capture_output=True, text=True,
                                timeout=90, stdin=subprocess.DEVNULL)
        assert status.returncode == 0, status.stderr
        assert f"#1 prod → {fast_service.commits['v1'][:7]} (build b-v1), by ana, for " in status.stdout
        assert f"process {proc.pid} on {socket.gethostname()}" in status.stdout
        assert "Frozen stages: none" in status.stdout
        cancel = subprocess.run([sys.executable, "-m", "bot", "cancel", "prod", "--by", "bo"], env=env,
                                capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        proc.wait(timeout=60)
    finally:
        release()
        proc.kill()
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert f"the rollback-bot process that runs it (pid {proc.pid})" in cancel.stdout
    assert "job 1 cancelled: deploy: cancelled while running" in cancel.stdout  # it waited for the end
    assert proc.returncode == 1 and "cancelled" in proc.stderr.read()
    _stopped_cleanly(fast_prod, fast_service, data, "bo")
    again = subprocess.run([sys.executable, "-m", "bot", "cancel", "prod", "--by", "bo"], env=env,
                           capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert again.returncode == 1 and "No rollback of `prod` is running here." in again.stderr


def test_a_deploy_printing_megabytes_on_one_line_is_cut_masked_and_finishes(make_fast_engine, fast_prod):
    engine = make_fast_engine(SLS_TEST_DEPLOY_LONG_LINE=str(2_000_000), SLS_TEST_SECRET="xoxb-test-token-123456")
    job = engine.jobs.wait(engine.jobs.start(engine.plan("prod", "previous"), "U-ANA", "U-BO"), timeout=120)
    assert job.state == "succeeded", job.reason
    long = [line for line in engine.store.output(job.id) if line.startswith("a.a.a.")]
    total = 4_000_000 + len("xoxb-test-token-123456")
    assert len(long) == 1 and len(long[0]) <= 4000  # sqlite keeps its head, and says how much is not there
    assert long[0].endswith(f" … [line cut: {total - 3940} more characters]")
    logged = [ln for ln in engine.jobs.log_path(job.id).read_text().splitlines() if ln.startswith("a.a.a.")]
    assert len(logged) == 1 and logged[0].endswith(f" … [line cut: {total - 8192} more characters]")  # the file: 8 KB
    assert "xoxb-test-token" not in engine.jobs.log_path(job.id).read_text()


def test_a_late_retry_never_overwrites_a_newer_rollback(fast_prod, proxy, fast_service, make_fast_engine, tmp_path):
    """Job 1 rolls back to v1 but cannot write index.json; meanwhile another replica rolls forward to v3.
    When S3 recovers, job 1's retry finds the stage moved on: it writes nothing and says so."""
    through(fast_prod, proxy)
    seen = []
    fast_prod.jobs.listeners.append(lambda job_id, event: seen.append(event))
    proxy.fail(-1, only=("PUT", "index.json"))
    first = fast_prod.jobs.wait(fast_prod.jobs.start(fast_prod.plan("prod", "previous"), "U-ANA", "U-BO"), 120)
    assert first.state == "succeeded" and first.recorded == 0  # deployed v1, not recorded yet
    replica = make_fast_engine(tmp_path / "replica")  # its own data folder, S3 without the fault
    second = replica.jobs.wait(replica.jobs.start(replica.plan("prod", "b-v3"), "U-CY", "U-DEE"), 120)
    assert second.state == "succeeded" and second.recorded == 1
    proxy.fail(0)  # S3 recovers for job 1's retry
    wait_for(lambda: any(e.step == "index" and e.status == "stale" for e in seen), 30, "the retry to give up")
    index = ArtifactStore(replica.artifacts.s3, BUCKET, SERVICE, "rollback/").read_index("prod")
    assert index.live.commit == fast_service.commits["v3"] and index.live.by == "U-DEE"
    assert index.find(fast_service.commits["v3"], "b-v3").bad is None and index.freeze is None
    assert live_code() == fast_code(fast_service, "v3")
    job = fast_prod.store.job(first.id)
    assert job.recorded == 2 and "the stage moved on while the job ran" in job.reason
    assert f"{fast_service.commits['v3'][:7]} (build b-v3) went live forward by U-DEE" in job.reason


def test_a_ci_deploy_recorded_during_the_job_is_not_written_over(fast_prod, fast_service):
    """CI ignored check-freeze and recorded v3 while the rollback deployed v1: the job's result is not
    written over CI's record, and the job says what it found instead of freezing CI on a guess."""
    hold = hold_file("stale-hold")
    hold.touch()
    fast_prod.jobs.config.env["SLS_TEST_DEPLOY_WAIT_FOR"] = str(hold)
    job_id = fast_prod.jobs.start(fast_prod.plan("prod", "previous"), "U-ANA", "U-BO")
    try:
        wait_for(lambda: any(e["step"] == "deploy" for e in fast_prod.store.events(job_id)), 60, "the deploy")
        fast_prod.artifacts.mark_deployed("prod", fast_service.commits["v3"], "b-v3", by="ci")
    finally:
        hold.unlink(missing_ok=True)
    job = fast_prod.jobs.wait(job_id, timeout=60)
    assert job.state == "succeeded" and job.recorded == 2
    assert "not recorded: the stage moved on while the job ran" in job.reason and "by ci" in job.reason
    index = fast_prod.artifacts.read_index("prod")
    assert index.live.commit == fast_service.commits["v3"] and index.freeze is None and index.in_use == []
    assert "warning: deployed and verified, but not recorded" in "\n".join(fast_prod.store.output(job_id))

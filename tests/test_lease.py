"""One lock for every replica, terminal and pipeline: the stage lease in S3 (`<prefix><service>/<stage>/lock.json`).
Real engines with separate data folders (so sqlite cannot keep them apart), the real console script,
moto's S3 with its conditional writes, the fast tier's deploy command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bot.adapters.store import StageBusy
from tests.conftest import BUCKET, SERVICE, fast_code, live_code
from tests.support.fast_service import DEPLOY_COMMAND, hold_file
from tests.support.serverless_fixture import sls_env
from tests.support.waiting import wait_for

LOCK_KEY = f"rollback/{SERVICE}/prod/lock.json"


def terminal_env(fast_service, aws_env, data, **extra) -> dict:
    return {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
            "ROLLBACK_REPO": str(fast_service.origin), "ROLLBACK_DATA_DIR": str(data),
            "ROLLBACK_DEPLOY_COMMAND": DEPLOY_COMMAND, **extra}


def cli(env, *args, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def held_deploy(engine, hold):
    """Start prod → previous on ``engine`` with its deploy held until ``hold`` is removed."""
    hold.touch()
    engine.jobs.config.env["SLS_TEST_DEPLOY_WAIT_FOR"] = str(hold)
    job_id = engine.jobs.start(engine.plan("prod", "previous"), "U-ANA", "U-BO", origin="slack")
    wait_for(lambda: any(e["step"] == "deploy" for e in engine.store.events(job_id)), 60, "the deploy to start")
    return job_id


def test_a_terminal_elsewhere_is_refused_while_the_bots_job_holds_the_stage_and_ci_waits(
        fast_prod, fast_service, aws_env, s3, tmp_path):
    hold = hold_file("lease-hold")
    job_id = held_deploy(fast_prod, hold)
    try:
        lease = json.loads(s3.get_object(Bucket=BUCKET, Key=LOCK_KEY)["Body"].read())
        assert (lease["job"], lease["approved_by"], lease["host"], lease["pid"]) == (
            job_id, "U-BO", socket.gethostname(), os.getpid())
        # a terminal on another machine (another data folder: its sqlite knows nothing of the bot's job)
        env = terminal_env(fast_service, aws_env, tmp_path / "laptop")
        refused = cli(env, "rollback", "prod", "previous", "--yes", "--by", "cy")
        assert refused.returncode != 0
        assert f"stage prod is busy: a rollback holds it (job {job_id} approved by U-BO" in refused.stderr
        assert f"on {socket.gethostname()} (pid {os.getpid()})" in refused.stderr
        # and CI, asking before it deploys, is told to wait: not only after the rollback froze it
        check = cli(env, "check-freeze", "--service", SERVICE, "--stage", "prod", "--commit",
                    fast_service.commits["v3"])
        assert check.returncode != 0
        assert f"rollback in progress on stage prod: job {job_id} approved by U-BO" in check.stdout + check.stderr
    finally:
        hold.unlink(missing_ok=True)
    job = fast_prod.jobs.wait(job_id, timeout=60)
    assert job.state == "succeeded", job.reason
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LOCK_KEY)  # let go when the job ended
    assert fast_prod.leases.current("prod") is None
    laptop = cli(terminal_env(fast_service, aws_env, tmp_path / "laptop"), "rollback", "prod", "b-v2", "--yes",
                 "--by", "cy")
    assert laptop.returncode == 0, laptop.stdout + laptop.stderr  # now the terminal may (a roll forward)
    assert live_code() == fast_code(fast_service, "v2")


def test_a_job_longer_than_its_lease_keeps_the_stage_by_renewing_it(make_fast_engine, fast_prod, fast_service,
                                                                    tmp_path):
    bot = make_fast_engine(tmp_path / "bot", ROLLBACK_LEASE_SECONDS="3")
    other = make_fast_engine(tmp_path / "replica", ROLLBACK_LEASE_SECONDS="3")
    hold = hold_file("lease-renew")
    job_id = held_deploy(bot, hold)
    try:
        first = bot.leases.current("prod")
        time.sleep(4.5)  # longer than the lease: only renewal keeps it
        renewed = bot.leases.current("prod")
        assert renewed is not None and renewed.token == first.token and renewed.until > first.until
        with pytest.raises(StageBusy, match=f"a rollback holds it \\(job {job_id} approved by U-BO"):
            other.jobs.start(other.plan("prod", "b-v3"), "U-ANA", "U-BO")
    finally:
        hold.unlink(missing_ok=True)
    assert bot.jobs.wait(job_id, timeout=60).state == "succeeded"
    assert live_code() == fast_code(fast_service, "v1")


def test_the_lease_of_a_killed_holder_expires_and_the_next_job_takes_it(make_fast_engine, fast_prod, fast_service,
                                                                        aws_env, tmp_path):
    hold = hold_file("lease-killed")
    hold.touch()
    env = terminal_env(fast_service, aws_env, tmp_path / "killed", ROLLBACK_LEASE_SECONDS="3",
                       SLS_TEST_DEPLOY_WAIT_FOR=str(hold), SLS_TEST_DEPLOY_PRINT="deploy under way")
    holder = subprocess.Popen([sys.executable, "-m", "bot", "rollback", "prod", "previous", "--yes", "--by", "ana"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              text=True, start_new_session=True)
    replica = make_fast_engine(tmp_path / "replica", ROLLBACK_LEASE_SECONDS="3")
    try:
        wait_for(lambda: replica.leases.current("prod") is not None, 60, "the terminal to take the lease")
        assert replica.leases.current("prod").pid == holder.pid
        wait_for(lambda: "deploy under way" in (holder.stdout.readline() or ""), 60, "the deploy to start")
        os.killpg(holder.pid, signal.SIGKILL)  # the machine dies mid-deploy: nobody lets the lease go
        holder.wait(timeout=30)
        with pytest.raises(StageBusy, match=f"on {socket.gethostname()} \\(pid {holder.pid}\\)"):
            replica.jobs.start(replica.plan("prod", "b-v3"), "U-ANA", "U-BO")
        wait_for(lambda: replica.leases.current("prod") is None, 10, "the dead holder's lease to expire")
        job = replica.jobs.wait(replica.jobs.start(replica.plan("prod", "b-v3"), "U-ANA", "U-BO"), timeout=60)
    finally:
        hold.unlink(missing_ok=True)
        if holder.poll() is None:
            holder.kill()
    assert job.state == "succeeded", job.reason
    assert live_code() == fast_code(fast_service, "v3")
    assert replica.leases.current("prod") is None


@pytest.mark.parametrize("body, says", [
    (b"not json at all", "lock.json is malformed"),
    (b"x" * 5000, "lock.json is larger than 4096 bytes"),
])
def test_a_lock_json_the_bot_cannot_read_stops_every_job_and_ci(fast_prod, fast_service, aws_env, s3, tmp_path,
                                                                body, says):
    """Written by someone with access to the bucket, or cut short: nobody can know the stage is free."""
    s3.put_object(Bucket=BUCKET, Key=LOCK_KEY, Body=body)
    with pytest.raises(StageBusy, match=f"stage prod cannot be taken: {says}.*Make sure no rollback runs"):
        fast_prod.jobs.start(fast_prod.plan("prod", "previous"), "U-ANA", "U-BO")
    check = cli(terminal_env(fast_service, aws_env, tmp_path / "ci"), "check-freeze", "--service", SERVICE,
                "--stage", "prod")
    assert check.returncode != 0 and says in check.stdout + check.stderr
    assert live_code() == fast_code(fast_service, "v2")


def test_a_forged_holder_name_reaches_nobody_as_markup_or_control_characters(fast_prod, s3):
    now = time.time()
    s3.put_object(Bucket=BUCKET, Key=LOCK_KEY, Body=json.dumps({
        "service": SERVICE, "stage": "prod", "job": 7, "token": "t", "approved_by": "<!channel> *x*\x1b[31m",
        "requested_by": "", "host": "evil\r\nhost", "pid": 1, "origin": "cli", "since": now, "until": now + 60}))
    with pytest.raises(StageBusy) as refused:
        fast_prod.jobs.start(fast_prod.plan("prod", "previous"), "U-ANA", "U-BO")
    text = str(refused.value)
    assert "job 7 approved by ??channel? ?x?" in text and "on evilhost (pid 1)" in text
    assert "\x1b" not in text and "\r" not in text
    assert "<" not in text and "*" not in text

"""The rollback engine end to end: moto's server (S3, CloudFormation, Lambda), the real Serverless
CLI, real git repositories. Proof of a rollback: Lambda's CodeSha256 is the target package's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bot.adapters.source import SourceError
from bot.adapters.store import StageBusy, Store
from bot.core.keys import StageKey
from bot.terminal.render import render_plan
from tests.conftest import BUCKET, SERVICE, code_of, live_code
from tests.support.procs import marker, pids_with
from tests.support.serverless_fixture import ci_deploy, sls_env
from tests.support.waiting import wait_for

SHA_MISSING = "d" * 40

pytestmark = pytest.mark.e2e


def run_job(engine, stage: str, ref: str, who: str = "U-ANA"):
    plan = engine.plan(stage, ref)
    job_id = engine.jobs.start(plan, requested_by=who, approved_by="U-BO")
    return plan, engine.jobs.wait(job_id, timeout=600)


def steps_of(engine, job_id: int) -> dict[str, str]:
    return {e["step"]: e["status"] for e in engine.store.events(job_id)}


def test_roll_back_to_v1_then_forward_to_v2(prod, service_history):
    v1, v2 = service_history.builds["v1"], service_history.builds["v2"]
    plan = prod.plan("prod", "previous")
    assert plan.target.commit == v1.commit and plan.live.commit == v2.commit
    assert [c.sha for c in plan.commits] == [v2.commit]  # the commit the rollback undoes
    assert plan.plugins is not None and not plan.plugins.changed
    assert plan.template is not None and plan.template.empty and plan.template.stack_exists

    job_id = prod.jobs.start(plan, requested_by="U-ANA", approved_by="U-BO")
    job = prod.jobs.wait(job_id, timeout=600)
    assert job.state == "succeeded", job.reason + "\n" + "\n".join(prod.store.log_tail(job_id, 40))
    assert live_code() == code_of(service_history, "v1")
    assert steps_of(prod, job_id) == {s: "finished" for s in ("restore", "checkout", "install", "deploy", "verify")} | {
        "job": "succeeded"}
    assert any("verified" in line for line in prod.store.output(job_id))

    index = prod.artifacts.read_index("prod")
    assert index.live.ident == (v1.commit, "b-v1") and index.live.via == "rollback"
    assert index.find(v2.commit, "b-v2").bad.reason == f"rolled back to {v1.commit[:7]} (build b-v1) (job {job_id})"
    assert index.freeze is not None and index.freeze.by == "U-BO"
    assert index.in_use == [] and prod.store.lock_of(StageKey(SERVICE, "prod")) is None

    # roll forward: the bad build can still be deployed by a person; the plan warns, success clears the mark
    plan = prod.plan("prod", v2.commit[:8])
    assert plan.target.bad is not None and "is marked bad by" in render_plan(plan, time.time())
    job_id = prod.jobs.start(plan, requested_by="U-ANA", approved_by="U-BO")
    job = prod.jobs.wait(job_id, timeout=600)
    assert job.state == "succeeded", job.reason
    assert live_code() == code_of(service_history, "v2")
    assert prod.artifacts.read_index("prod").find(v2.commit, "b-v2").bad is None


def test_without_force_the_roll_forward_is_skipped_and_verify_catches_it(make_engine, service_history, aws_env):
    """Why --force: Serverless compares with its newest upload (v2's, stored under v2's package
    time), not with what is live (v1), and skips rolling forward as "No changes to deploy".

    CI deploys only v2 here: moto keeps a function's LastModified from its creation through
    CloudFormation updates, which would otherwise trip Serverless's own "changed since" check."""
    engine = make_engine()
    for name in ("v1", "v2"):
        b = service_history.builds[name]
        engine.artifacts.publish("prod", b.commit, b.package, build_id=f"b-{name}")
    ci_deploy(service_history, "v2", sls_env(aws_env))
    engine.artifacts.mark_deployed("prod", service_history.builds["v2"].commit, "b-v2")
    _, job = run_job(engine, "prod", "b-v1")
    assert job.state == "succeeded" and live_code() == code_of(service_history, "v1")

    no_force = make_engine(
        ROLLBACK_DEPLOY_COMMAND="node_modules/.bin/serverless deploy --stage {stage} --package {package}")
    _, job = run_job(no_force, "prod", "b-v2")
    log = "\n".join(no_force.store.output(job.id))
    assert "No changes to deploy" in log, log
    assert job.state == "failed" and job.reason.startswith("verify: the deploy finished but 1 of 1 functions")
    assert live_code() == code_of(service_history, "v1")  # v2 did not go live, and we did not claim it did
    assert no_force.artifacts.read_index("prod").live.build_id == "b-v1"


def test_check_freeze_from_another_machine(prod, service_history, aws_env, tmp_path):
    v2 = service_history.builds["v2"]
    run_job(prod, "prod", "previous")
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
           "ROLLBACK_DATA_DIR": str(tmp_path / "ci-machine")}  # nothing local: only S3

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True, timeout=60)

    frozen = cli("check-freeze", "--stage", "prod", "--commit", v2.commit)
    assert frozen.returncode == 1
    assert "frozen by U-BO" in frozen.stderr and f"commit {v2.commit[:12]} is marked bad" in frozen.stderr
    assert "rolled back to" in frozen.stderr
    assert not (tmp_path / "ci-machine").exists()  # it read S3 only

    assert cli("unfreeze", "prod", "--by", "ana").returncode == 0
    assert cli("check-freeze", "--stage", "prod", "--commit", v2.commit).returncode == 1  # still bad
    fresh = cli("check-freeze", "--stage", "prod", "--commit", "e" * 40)
    assert fresh.returncode == 0, fresh.stderr
    assert cli("check-freeze", "--stage", "prod").returncode == 0


def assert_failed_cleanly(engine, job, expect_in_reason: str, live_build: str = "b-v2"):
    assert job.state in ("failed", "cancelled"), job
    assert expect_in_reason in job.reason
    assert engine.store.lock_of(StageKey(SERVICE, job.stage)) is None
    index = engine.artifacts.read_index(job.stage)
    assert index.live.build_id == live_build and index.freeze is None and index.in_use == []
    assert not any(a.bad for a in index.artifacts)
    engine.jobs.idle()
    assert not (engine.settings.data_dir / "jobs" / str(job.id)).exists()


def test_deploy_fails_on_a_broken_serverless_yml(prod, service_history):
    prod.artifacts.publish("prod", service_history.builds["broken"].commit, service_history.builds["broken"].package,
                           build_id="b-broken")
    _, job = run_job(prod, "prod", "b-broken")
    assert_failed_cleanly(prod, job, "deploy: ")
    v2 = service_history.builds["v2"].commit[:7]
    assert (f"Stack hello-service-prod is UPDATE_COMPLETE; Lambda runs {v2} (build b-v2, live before the job; "
            "the target has the same code): check it") in job.reason  # the fixture's broken build reuses v2's
    assert live_code() == code_of(service_history, "v2")
    assert prod.store.log_tail(job.id, 20)  # the log's tail is kept for the report


def test_install_fails(prod, service_history, make_engine):
    failing = make_engine(ROLLBACK_INSTALL_COMMAND="npm ci --no-audit --prefix ./does-not-exist --omit-lockfile-x")
    _, job = run_job(failing, "prod", "previous")
    assert_failed_cleanly(failing, job, "install: ")
    assert live_code() == code_of(service_history, "v2")


def test_a_commit_missing_from_the_repository_stops_before_anything_runs(prod, service_history):
    prod.artifacts.publish("prod", SHA_MISSING, service_history.builds["v1"].package, build_id="ghost")
    with pytest.raises(SourceError, match="is not in .*force-pushed"):
        prod.plan("prod", "ghost")
    assert prod.store.jobs() == [] and prod.store.lock_of(StageKey(SERVICE, "prod")) is None


def test_checksum_mismatch_fails_at_restore(prod, s3, service_history):
    plan = prod.plan("prod", "previous")
    s3.put_object(Bucket=BUCKET, Key=plan.target.key, Body=b"PK\x03\x04tampered",
                  Metadata={"sha256": plan.target.sha256})  # the metadata kept: the bytes' sha256 catches it
    job_id = prod.jobs.start(plan, requested_by="U-ANA", approved_by="U-BO")
    job = prod.jobs.wait(job_id, timeout=120)
    assert_failed_cleanly(prod, job, "restore: ")
    assert "corrupt in S3" in job.reason
    assert steps_of(prod, job_id).get("checkout") is None  # nothing after restore ran


def test_cancel_during_install_stops_its_processes(prod, make_engine, tmp_path):
    mark = marker()
    script = f"import time; mark='{mark}'; print('installing', flush=True); time.sleep(300)"
    hang = make_engine(ROLLBACK_INSTALL_COMMAND=f"{sys.executable} -c \"{script}\"")
    plan = hang.plan("prod", "previous")
    job_id = hang.jobs.start(plan, requested_by="U-ANA", approved_by="U-BO")
    wait_for(lambda: pids_with(mark), 120, "the installer to run")
    with pytest.raises(StageBusy, match="busy: job .* started by U-BO"):
        hang.jobs.start(hang.plan("prod", "previous"), requested_by="U-CY")
    assert hang.jobs.cancel(job_id, "U-ANA")
    job = hang.jobs.wait(job_id, timeout=60)
    assert job.state == "cancelled" and job.cancelled_by == "U-ANA"
    assert_failed_cleanly(hang, job, "install: cancelled")
    assert pids_with(mark) == []


def test_a_step_timeout_stops_the_whole_process_group(prod, make_engine, tmp_path):
    mark = marker()
    script = (f"import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(300) "
              f"# {mark}']); print('deploying', flush=True); time.sleep(300)")
    slow = make_engine(ROLLBACK_STEP_TIMEOUT="3", ROLLBACK_DEPLOY_COMMAND=f"{sys.executable} -c \"{script}\"")
    _, job = run_job(slow, "prod", "previous")
    assert_failed_cleanly(slow, job, "deploy: timed out after 3s")
    assert pids_with(mark) == []  # the grandchild went with its group


def test_bot_killed_mid_deploy_is_recovered_as_interrupted(prod, make_engine, aws_env, tmp_path, service_history):
    data = tmp_path / "crash-data"
    mark = marker()
    script = f"import time; mark='{mark}'; print('deploying', flush=True); time.sleep(300)"
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
           "ROLLBACK_REPO": str(service_history.origin), "ROLLBACK_DATA_DIR": str(data),
           "ROLLBACK_DEPLOY_COMMAND": f"{sys.executable} -c \"{script}\""}
    bot = subprocess.Popen([sys.executable, "-m", "bot", "rollback", "prod", "previous", "--yes"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: pids_with(mark), 300, "the deploy to run")
    bot.send_signal(signal.SIGKILL)
    bot.wait()
    # the sandbox dies with its bot (bubblewrap's --die-with-parent): no deploy goes on unreported
    wait_for(lambda: not pids_with(mark), 10, "the deploy to stop with the bot")

    before = Store(data / "rollback-bot.sqlite").jobs()[0]
    assert before.state == "running"
    restarted = make_engine(data_dir=data)
    recovered = restarted.jobs.recover()
    assert [j.id for j in recovered] == [before.id]
    job = restarted.store.job(before.id)
    assert job.state == "interrupted" and job.stack_status == "UPDATE_COMPLETE"
    assert "stack hello-service-prod is UPDATE_COMPLETE" in job.reason
    assert restarted.store.lock_of(StageKey(SERVICE, "prod")) is None
    assert restarted.artifacts.read_index("prod").in_use == []
    assert restarted.jobs.recover() == []  # once only


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_second_rollback_with_the_same_lockfile_reuses_the_plugin_cache(prod, make_engine, tmp_path):
    cold = make_engine(data_dir=tmp_path / "cold", cold_cache=True)
    _, first = run_job(cold, "prod", "previous")
    assert first.state == "succeeded", first.reason
    assert any(line.startswith("$ npm ci") for line in cold.store.output(first.id))
    _, second = run_job(cold, "prod", "b-v2")
    assert second.state == "succeeded", second.reason
    out = cold.store.output(second.id)
    assert not any(line.startswith("$ npm ci") for line in out)
    assert any("plugins from the cache" in line for line in out)


def test_cli_rollback_shows_the_plan_and_steps_and_records_history(prod, service_history, aws_env, tmp_path,
                                                                   shared_plugin_cache):
    v1, v2 = service_history.builds["v1"], service_history.builds["v2"]
    data = tmp_path / "cli-data"
    data.mkdir()
    (data / "plugin-cache").symlink_to(shared_plugin_cache)
    env = {**sls_env(aws_env), "ROLLBACK_BUCKET": BUCKET, "ROLLBACK_SERVICE": SERVICE, "ROLLBACK_PREFIX": "rollback/",
           "ROLLBACK_REPO": str(service_history.origin), "ROLLBACK_DATA_DIR": str(data)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)

    refused = cli("rollback", "prod", "previous")  # no terminal to confirm with, and no --yes
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert "Roll back prod to" in refused.stdout  # the plan was shown
    unknown = cli("rollback", "staging", "previous", "--yes")
    assert unknown.returncode == 1 and "Stage `staging` has no builds. Known stages: prod." in unknown.stderr
    assert live_code() == code_of(service_history, "v2")

    done = cli("rollback", "prod", "previous", "--yes", "--by", "ana")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"Roll back prod to {v1.commit[:12]} (build b-v1)" in out
    assert "chosen as `previous`: was live before the current build" in out
    assert f"Live now: {v2.commit[:12]} (build b-v2)" in out
    assert "Commits undone (1):" in out and "Bo Ops: Make hello say v2" in out
    assert "Plugin set unchanged" in out and "no resources added or removed" in out
    for n, step in enumerate(("restore", "checkout", "install", "deploy", "verify"), start=1):
        assert f"[{n}/5] ✔ {step}" in out
    assert "Service deployed to stack hello-service-prod" in out  # the deploy's own output, live
    assert "succeeded" in out and "CI is frozen on prod" in out
    assert live_code() == code_of(service_history, "v1")

    history = cli("history", "prod").stdout
    assert "succeeded in " in history and f"→ {v1.commit[:7]} (build b-v1)" in history
    assert "requested by ana, approved by ana" in history


def test_secrets_never_reach_the_recorded_log(prod, make_engine):
    script = ("import os; print('key', os.environ.get('AWS_SECRET_ACCESS_KEY')); "
              "print('slack', os.environ.get('SLACK_BOT_TOKEN')); print('id AKIAIOSFODNN7EXAMPLE')")
    leaky = make_engine(ROLLBACK_DEPLOY_COMMAND=f"{sys.executable} -c \"{script}\"")
    _, job = run_job(leaky, "prod", "previous")
    log = "\n".join(leaky.store.output(job.id))
    assert "key ***" in log and "testing-secret" not in log
    assert "slack None" in log  # the Slack token is not in a subprocess's environment at all
    assert "AKIA" not in log and "id ***" in log

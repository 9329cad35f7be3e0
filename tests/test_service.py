"""One service for every face: the CLI and Slack get the same answers, and the policy is checked in the
service, so it holds at a terminal too."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bot.core.actor import Actor
from bot.core.jobs import JobState
from bot.core.policy import Policy
from bot.engine.service import RollbackService


def cli(engine, *args, **extra_env) -> subprocess.CompletedProcess:
    s = engine.settings
    env = {**s.child_env, "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_SERVICE": s.service, "ROLLBACK_PREFIX": s.prefix,
           "ROLLBACK_REPO": s.repo, "ROLLBACK_DATA_DIR": str(s.data_dir), **extra_env}
    return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True, timeout=60)


def test_history_is_runs_only_in_every_face(fast_prod):
    service = RollbackService(fast_prod, Policy())
    store = fast_prod.store
    waiting = store.create_job(stage="prod", target_commit="a" * 40, requested_by="U-ANA", state="pending")
    gone = store.create_job(stage="prod", target_commit="b" * 40, requested_by="U-ANA", state="pending")
    store.claim(gone, "pending", "withdrawn")
    ran = store.create_job(stage="prod", target_commit="c" * 40, target_build="7", requested_by="U-ANA",
                           state="running", started=time.time())
    store.update_job(ran, state="failed", finished=time.time(), reason="deploy: boom")
    runs = service.history(service.key("prod"), Actor.in_slack("U-ANA", None))
    assert [(j.id, j.state) for j in runs] == [(ran, JobState.FAILED)]
    out = cli(fast_prod, "history", "prod").stdout
    assert f"#{ran}" in out and f"#{waiting} " not in out and f"#{gone} " not in out


def test_the_terminal_follows_the_policy_as_slack_does(fast_prod, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[stages.prod]\napprovers = ["ana"]\nrequesters = ["ana"]\n')
    from bot.core.stage_index import Mark

    fast_prod.artifacts.update_index("prod", lambda index: setattr(index, "freeze", Mark("U-BO", "rolled back", 1.0)))
    refused = cli(fast_prod, "unfreeze", "prod", "--by", "bo", ROLLBACK_CONFIG=str(policy))
    assert refused.returncode == 1 and "not an approver for `prod`" in refused.stderr
    assert fast_prod.artifacts.read_index("prod").freeze is not None
    done = cli(fast_prod, "unfreeze", "prod", "--by", "ana", ROLLBACK_CONFIG=str(policy))
    assert done.returncode == 0 and "prod: unfrozen" in done.stdout
    actions = [(a.actor, a.action) for a in fast_prod.store.audit_trail("prod")]
    assert actions[:2] == [("ana", "unfreeze"), ("bo", "unfreeze.refused")]
    nobody = cli(fast_prod, "rollback", "prod", "previous", "--yes", "--by", "bo", ROLLBACK_CONFIG=str(policy))
    assert nobody.returncode == 1 and "not allowed to request rollbacks of `prod`" in nobody.stderr


def test_every_request_names_a_stage_of_a_service_this_bot_serves(fast_prod):
    from bot.core.keys import StageKey
    from bot.engine.service import Refused

    service = RollbackService(fast_prod, Policy())
    assert service.key("prod") == StageKey("hello-service", "prod")
    assert service.index(service.key("prod")).live is not None
    other = StageKey("billing", "prod")
    for call in (service.index, service.check_freeze, lambda k: service.history(k, Actor.in_slack("U", None))):
        with pytest.raises(Refused, match="This bot serves `hello-service`, not `billing`"):
            call(other)


def test_history_and_the_audit_trail_export_as_json_for_the_incident_review(fast_prod):
    import json

    service = RollbackService(fast_prod, Policy())
    ana = Actor.at_terminal("ana")
    job_id = service.approve(service.request(service.key("prod"), "previous", ana).job_id, ana).job.id
    fast_prod.jobs.wait(job_id, timeout=60)
    runs = json.loads(cli(fast_prod, "history", "prod", "--json").stdout)
    assert len(runs) == 1 and runs[0]["id"] == job_id and runs[0]["state"] == "succeeded"
    assert runs[0]["to"]["build"] == "b-v1" and runs[0]["from"]["build"] == "b-v2"
    assert runs[0]["requested_by"] == runs[0]["approved_by"] == {"id": "ana", "name": "ana"}
    assert runs[0]["direction"] == "rollback" and runs[0]["card"] is None  # no Slack card for a terminal run
    assert runs[0]["started"].endswith("+00:00") and runs[0]["duration_s"] > 0 and runs[0]["index_recorded"]
    entries = json.loads(cli(fast_prod, "audit", "--since", "2020-01-01", "--json").stdout)
    actions = [(e["actor"], e["action"]) for e in entries]
    assert ("ana", "rollback.start") in actions and ("ana", "rollback.succeeded") in actions
    start = next(e for e in entries if e["action"] == "rollback.start")
    assert start["detail"]["origin"] == "cli" and start["detail"]["policy"] == "none"
    assert json.loads(cli(fast_prod, "audit", "--since", "2999-01-01", "--json").stdout) == []
    bad = cli(fast_prod, "audit", "--since", "last tuesday")
    assert bad.returncode == 1 and "is not a date: give YYYY-MM-DD" in bad.stderr

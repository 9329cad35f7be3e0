import pytest

from bot.adapters.store import StageBusy, Store
from bot.core.keys import StageKey
from bot.core.masking import Masker


def test_schema_is_created_once_and_reopened(tmp_path):
    db = tmp_path / "state.sqlite"
    store = Store(db)
    job = store.create_job(stage="prod", requested_by="U1", state="running")
    again = Store(db)
    assert again.schema_version == 12 and again.job(job).requested_by == "U1"


def test_one_lock_per_stage_naming_the_holder(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.acquire_lock(StageKey("svc", "prod"), 1, "U-ANA")
    with pytest.raises(StageBusy, match="stage prod is busy: job 1 started by U-ANA"):
        store.acquire_lock(StageKey("svc", "prod"), 2, "U-BO")
    store.acquire_lock(StageKey("svc", "dev"), 3, "U-BO")  # other stages are independent
    store.release_lock(StageKey("svc", "prod"), 2)  # not the holder: nothing happens
    assert store.lock_of(StageKey("svc", "prod")).job_id == 1
    store.release_lock(StageKey("svc", "prod"), 1)
    store.acquire_lock(StageKey("svc", "prod"), 2, "U-BO")


def test_output_and_audit_are_kept_in_order(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    job = store.create_job(stage="prod")
    store.add_output(job, "deploy", [f"line {i}" for i in range(1000)])
    assert store.output(job)[0] == "line 0" and len(store.output(job)) == 1000
    assert store.log_tail(job, 2) == ["line 998", "line 999"]
    store.audit("U1", "approve.refused", StageKey("svc", "prod"), job, why="not an approver")
    assert store.audit_trail("prod")[0].action == "approve.refused"


def test_secrets_are_masked():
    mask = Masker(["hunter2-secret", "xoxb-123"])
    text = mask("token hunter2-secret key AKIAIOSFODNN7EXAMPLE aws_secret_access_key = abc/def xoxb-9999-abcdefgh")
    assert "hunter2" not in text and "AKIA" not in text and "abc/def" not in text and "xoxb-9999" not in text
    assert text.count("***") == 4

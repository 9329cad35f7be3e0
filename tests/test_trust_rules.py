"""Trust rules as plain functions: escaping in every builder, masking, the index as untrusted input,
the policy failing closed, a roll forward, and what keeps state from growing forever."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import replace

import pytest

from bot.adapters.plugin_cache import PluginCache
from bot.adapters.source import CommitInfo, PluginChange
from bot.adapters.stack import TemplateDiff
from bot.adapters.store import OUTPUT_HEAD, OUTPUT_TAIL, Store
from bot.core.cards import AppCard
from bot.core.jobs import Job
from bot.core.keys import StageKey
from bot.core.masking import Masker, MaskingFilter
from bot.core.policy import Policy, PolicyError, PolicySource
from bot.core.records import HeldLock
from bot.core.stage_index import Artifact, LiveRecord, Mark, StageIndex
from bot.engine.planner import Plan
from bot.slack import blocks as kit
from bot.slack.app import BoundedWork, GroupDirectory, make_client

HOSTILE = "<!channel> <!here> see <https://evil.example|the runbook> <@U0ADMIN> <#C0SECRET> ``` `x` & *b* _i_"
SHA = "a" * 40
SHA2 = "b" * 40
SHA256 = "c" * 64


def hostile_artifact(commit=SHA, build="b-1", created=1.0) -> Artifact:
    return Artifact(commit, build, f"p/s/prod/{commit}/{build}/package.zip", SHA256, 10, created,
                    author=HOSTILE, message=HOSTILE + "\n" + HOSTILE, bad=Mark(HOSTILE, HOSTILE, 2.0))


def mrkdwn_texts(blocks) -> list[str]:
    """Every string Slack would parse as mrkdwn in these blocks."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return found


ALLOWED_TOKEN = re.compile(r"^<(@U-ANA|@U-BO|!date\^\d+\^[^|>]*\|[^>]*)>$")


def assert_inert(blocks) -> None:
    for text in mrkdwn_texts(blocks):
        for token in re.findall(r"<[^>]*>", text):
            assert ALLOWED_TOKEN.match(token), f"a mention or link the bot did not put there: {token}"
        assert "<!channel>" not in text and "<https://evil" not in text
        spans = text.replace("```", "")
        assert text.count("```") % 2 == 0 and spans.count("`") % 2 == 0, f"an unbalanced code span: {text!r}"


def test_hostile_text_comes_out_of_every_builder_as_text():
    art = hostile_artifact()
    index = StageIndex("s", "prod", artifacts=[art, hostile_artifact(SHA2, "b-2", 0.5)],
                       history=[LiveRecord(SHA, "b-1", 3.0, HOSTILE)], freeze=Mark(HOSTILE, HOSTILE, 4.0))
    index.refused = [("artifacts", {"commit": HOSTILE}, HOSTILE)]
    commits = [CommitInfo(SHA, HOSTILE, HOSTILE)]
    plan = Plan("prod", "previous", art, art, chosen_because=HOSTILE, commits=commits,
                plugins=PluginChange(True, (HOSTILE,), (HOSTILE, "x"), ("package.json",)),
                template=TemplateDiff(removed=[(HOSTILE, HOSTILE)], added=[(HOSTILE, HOSTILE)]),
                freeze=Mark(HOSTILE, HOSTILE, 1.0), warnings=[HOSTILE], forward=True)
    job = {"id": 7, "stage": "prod", "state": "failed", "target_commit": SHA, "requested_by": "U-ANA",
           "approved_by": HOSTILE, "reason": HOSTILE, "started": 1.0, "finished": 2.0, "created": 1.0,
           "cancelled_by": HOSTILE, "plan_json": "{}", "permalink": "javascript:alert(1)|<!channel>"}
    every = [
        kit.help_blocks([HOSTILE]),
        kit.listing_blocks(index, 10.0),
        kit.plan_blocks(plan, 1, "U-ANA", 100.0, 10.0, needs=HOSTILE),
        kit.outdated_plan_blocks(HOSTILE, SHA, [HOSTILE], HOSTILE),
        kit.deployed_blocks(HOSTILE, art, art, commits, HOSTILE, 10.0),
        kit.home_blocks([(index, HeldLock(HOSTILE, HOSTILE, 1, HOSTILE))], [Job.from_row(job)], 10.0,
                        policy_configured=False),
        kit.closed_plan_blocks(HOSTILE, SHA, "Cancelled by <@U-BO>"),
        kit.progress_blocks(Job.from_row(job), {"deploy": ("failed", 1.0)}, [HOSTILE, "```", HOSTILE], 10.0),
        kit.progress_blocks(Job.from_row({**job, "state": "running", "cancelled_by": HOSTILE}), {}, [], 10.0),
        kit.progress_blocks(Job.from_row({**job, "state": "succeeded", "recorded": 0}), {}, [], 10.0),
        kit.status_blocks([Job.from_row(job)], {StageKey(HOSTILE, HOSTILE): Mark(HOSTILE, HOSTILE, 1.0)}, 10.0,
                          several=True),
        kit.help_blocks([HOSTILE], [HOSTILE]),
        kit.listing_blocks(index, 10.0, account=HOSTILE),
        kit.stage_overview_blocks(HOSTILE, [(index, HOSTILE)]),
        kit.plan_blocks(replace(plan, service=HOSTILE, account=HOSTILE), 1, "U-ANA", 100.0, 10.0, needs=HOSTILE),
        kit.deployed_blocks(HOSTILE, art, art, commits, HOSTILE, 10.0, service=HOSTILE),
        kit.outdated_plan_blocks(HOSTILE, SHA, [HOSTILE], HOSTILE, service=HOSTILE),
        kit.progress_blocks(Job.from_row({**job, "plan_json": json.dumps({"service": HOSTILE, "account": HOSTILE})}),
                            {}, [], 10.0),
        [kit.section(kit.choose_service_text(HOSTILE, HOSTILE, [HOSTILE])),
         kit.section(kit.choose_service_text(HOSTILE, "", [HOSTILE], HOSTILE))],
        kit.superseded_blocks(HOSTILE, LiveRecord(SHA, "b-1", 3.0, HOSTILE), LiveRecord(SHA2, "b-2", 4.0, HOSTILE)),
        [kit.section(kit.history_text(HOSTILE, [Job.from_row(job)]))],
    ]
    for blocks in every:
        assert_inert(blocks)
    assert "&lt;!channel&gt;" in json.dumps(every[2])  # shown, as text


def test_the_mask_covers_every_shape_of_secret():
    mask = Masker(["exact-value-123"])
    cases = {
        "https://x-access-token:tok123@github.com/o/r.git": "https://***@github.com/o/r.git",
        "ssh://git:pw@host/r": "ssh://***@host/r",
        "token ghp_" + "a" * 36: "token ***",
        "github_pat_" + "B" * 30: "***",
        "gho_" + "c" * 36 + " ghs_" + "d" * 36 + " ghu_" + "e" * 36: "*** *** ***",
        "//registry.npmjs.org/:_authToken=npm_" + "f" * 36: "//registry.npmjs.org/:_authToken=***",
        "NPM npm_" + "g" * 36: "NPM ***",
        "xoxb-1111-2222-abcdefgh xapp-1-A1-abcdefgh": "*** ***",
        "AKIAABCDEFGHIJKLMNOP ASIAABCDEFGHIJKLMNOP": "*** ***",
        "aws_session_token = IQoJb3JpZ2luX2VjEAAaCXVzLWVhc3QtMSJH": "aws_session_token = ***",
        "token IQoJb3JpZ2luX2VjEAAaCXVzLWVhc3QtMSJHMEUCIQ": "token ***",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA\n-----END OPENSSH PRIVATE KEY-----": "***",
        "the exact-value-123 here": "the *** here",
    }
    for raw, masked in cases.items():
        assert mask(raw) == masked, raw
    lines = mask.lines()
    assert [lines(x) for x in ["ok", "-----BEGIN RSA PRIVATE KEY-----", "MIIEow", "-----END RSA PRIVATE KEY-----",
                               "after"]] == ["ok", "***", "***", "***", "after"]


def test_log_records_are_masked_on_their_way_out():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "cannot fetch %s", ("https://u:p4ss@h/r",), None)
    MaskingFilter(Masker()).filter(record)
    assert record.getMessage() == "cannot fetch https://***@h/r"


def test_index_entries_that_are_not_what_publish_writes_are_refused_by_name_and_kept():
    key = lambda c, b: f"rollback/s/prod/{c}/{b}/package.zip"  # noqa: E731
    good = {"commit": SHA, "build_id": "1", "key": key(SHA, "1"), "sha256": SHA256, "size": 10, "created": 1.0}
    bad = [
        {**good, "build_id": "2", "key": "rollback/s/staging/" + SHA + "/2/package.zip"},  # another stage's object
        {**good, "commit": "--output=/x", "key": key("--output=/x", "1")},
        {**good, "build_id": "3", "key": key(SHA, "3"), "sha256": "zz"},
        {**good, "build_id": "4", "key": key(SHA, "4"), "size": 10**13},
        {**good, "build_id": "5", "key": key(SHA, "5"), "size": "10"},
        "not an object",
    ]
    raw = json.dumps({"schema": 1, "service": "s", "stage": "prod", "artifacts": [good, *bad],
                      "history": [{"commit": "-x", "build_id": "1", "at": 1.0}], "in_use": []}).encode()
    index = StageIndex.from_json(raw, "index.json", key_for=key)
    assert [a.build_id for a in index.artifacts] == ["1"] and index.history == []
    reasons = " | ".join(why for _, _, why in index.refused)
    for expected in ("is not this stage's layout path", "'--output=/x' is not a full lowercase SHA",
                     "sha256 is not 64 hex characters", "size '10000000000000' is out of bounds",
                     "size '10' is out of bounds", "expected an object"):
        assert expected in reasons
    with pytest.raises(Exception, match="No build of stage prod matches"):
        index.resolve("--output=/x")
    again = json.loads(index.to_json())  # refused entries are written back as they were, never dropped
    assert len(again["artifacts"]) == 1 + len(bad) and again["history"][0]["commit"] == "-x"


def test_policy_typos_stop_start_up_with_the_key_and_its_line():
    text = '[stage.prod]\napprovers = ["U1"]\n\n[stages.prod]\nrequesters = ["U1"]\naprovers = ["U2"]\n' \
           'approver_must_differ = "yes"\n'
    with pytest.raises(PolicyError) as err:
        Policy.parse(text, "policy.toml")
    message = str(err.value)
    assert "policy.toml:1: unknown table or key `stage`" in message
    assert "policy.toml:6: unknown key `aprovers` in [stages.prod]" in message
    assert "policy.toml:7: [stages.prod] approver_must_differ must be true or false" in message


def test_a_stage_no_rule_covers_is_refused_and_star_covers_the_rest():
    only = Policy.parse('[stages.prod]\napprovers = ["U1"]\n', "p.toml")
    decision = only.may_request("staging", "U1", "C1")
    assert not decision.allowed and "p.toml has no rule for stage `staging`" in decision.reason
    assert not only.may_approve("staging", "U1", "U2").allowed
    star = Policy.parse('[stages.prod]\napprovers = ["U1"]\n[stages."*"]\napprovers = ["U9"]\n', "p.toml")
    assert star.may_approve("staging", "U9", "U2").allowed and not star.may_approve("staging", "U1", "U2").allowed
    assert Policy().may_approve("anything", "anyone", "anyone").allowed  # no file: anyone, and cards say so


def test_the_policy_reloads_when_its_file_changes_and_keeps_the_old_one_when_the_new_is_broken(tmp_path, caplog):
    path = tmp_path / "p.toml"
    path.write_text('[stages.prod]\napprovers = ["U1"]\n')
    now = [0.0]
    source = PolicySource(Policy.load(path), path, check_every=1.0, clock=lambda: now[0])
    path.write_text('[stages.prod]\napprovers = ["U2"]\n')
    assert source.current().may_approve("prod", "U1", "x").allowed  # not looked at again within a second
    now[0] = 2.0
    assert source.current().may_approve("prod", "U2", "x").allowed
    path.write_text('[stages.prod]\naprovers = ["U3"]\n')
    now[0] = 4.0
    with caplog.at_level(logging.ERROR):
        assert source.current().may_approve("prod", "U2", "x").allowed
    assert "previous policy stays in force" in caplog.text and "unknown key `aprovers`" in source.last_error


def test_an_edit_of_the_catalog_keys_says_in_the_log_that_they_need_a_restart(tmp_path, caplog):
    """The policy's rules reload; a stage's role, region, alarms or variables are read into the engines at
    start-up, so the log says which changed and that a restart applies them, instead of silently not."""
    path = tmp_path / "p.toml"
    path.write_text('[stages.prod]\napprovers = ["U1"]\nrole_arn = "arn:aws:iam::111111111111:role/a"\n')
    now = [0.0]
    source = PolicySource(Policy.load(path), path, check_every=1.0, clock=lambda: now[0])
    path.write_text('[stages.prod]\napprovers = ["U2"]\nrole_arn = "arn:aws:iam::111111111111:role/a"\n')
    now[0] = 2.0
    with caplog.at_level(logging.WARNING):
        assert source.current().may_approve("prod", "U2", "x").allowed
    assert source.restart_needed == [] and "restart" not in caplog.text  # a rule alone: in force, no restart
    path.write_text('[stages.prod]\napprovers = ["U2"]\nrole_arn = "arn:aws:iam::222222222222:role/b"\n'
                    'alarms = ["api-5xx"]\n')
    now[0] = 4.0
    with caplog.at_level(logging.WARNING):
        source.current()
    assert source.restart_needed == ["stages.prod"]
    assert "also changed [stages.prod]" in caplog.text and "restart the bot for these to take effect" in caplog.text


def test_a_removed_group_member_stays_removed_when_slack_cannot_say(tmp_path):
    from bot.core.config import load_settings
    from bot.playground.slack import SlackStandIn

    standin = SlackStandIn()
    try:
        standin.groups["S-SRE"] = ["U-BO"]
        client = make_client(load_settings({"SLACK_BOT_TOKEN": "xoxb-t", "SLACK_API_URL": standin.api_url}))
        now = [0.0]
        groups = GroupDirectory(client, lambda: {"S-SRE"}, clock=lambda: now[0], ttl=60)
        assert groups("U-BO") == {"S-SRE"}
        standin.groups["S-SRE"] = []  # Bo leaves the group…
        standin.errors["usergroups.users.list"] = "fatal_error"  # …and Slack cannot be asked
        now[0] = 61.0
        assert groups("U-BO") == set()
    finally:
        standin.stop()


def index_of(*builds: str) -> StageIndex:
    """Builds published in this order (the last is the newest)."""
    index = StageIndex("s", "prod")
    for n, b in enumerate(builds):
        index.add(Artifact(b * 40, b, "k", SHA256, 1, float(n)))
    return index


def test_a_roll_forward_is_not_a_rollback():
    index = index_of("1", "2", "3")
    art = {b: index.find(b * 40, b) for b in "123"}
    for n, b in enumerate("23"):
        index.set_live(art[b], "ci", 10.0 + n)
    # v3 live → rollback to v2: v3 is bad, CI frozen
    assert not index.is_forward(art["2"])
    assert index.record_rollback(art["2"], "U-BO", 20.0, "r") == [art["3"]]
    assert index.freeze is not None and index.bad_mark_for("3" * 40) is not None
    # the fix is in v3 after all: v3 again is a roll forward: it marks nothing, clears its own mark
    assert index.is_forward(art["3"])
    assert index.record_forward(art["3"], "U-BO", 30.0, unfreeze=False) is None
    assert art["2"].bad is None and art["3"].bad is None and index.freeze is not None
    assert index.bad_mark_for("2" * 40) is None and index.bad_mark_for("3" * 40) is None
    assert index.previous()[0] is art["2"]  # previous still means v2, which is good
    # a rollback to v1 marks only what is newer than v1 and went live after it
    assert index.record_rollback(art["1"], "U-BO", 40.0, "r") == [art["3"], art["2"]]
    assert index.record_forward(art["2"], "U-BO", 50.0, unfreeze=True) is not None and index.freeze is None
    assert art["1"].bad is None and art["2"].bad is None and art["3"].bad is not None


def test_job_output_keeps_head_and_tail_and_old_records_are_pruned(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    job = store.create_job(stage="prod", state="running", created=1.0)
    for start in range(0, 10_000, 200):
        store.add_output(job, "deploy", [f"line {n}" for n in range(start, start + 200)])
    lines = store.output(job)
    assert lines[0] == "line 0" and lines[-1] == "line 9999"
    assert lines[OUTPUT_HEAD - 1] == f"line {OUTPUT_HEAD - 1}" and "lines not kept here" in lines[OUTPUT_HEAD]
    assert len(lines) <= OUTPUT_HEAD + OUTPUT_TAIL + 501
    store.update_job(job, state="succeeded", finished=2.0)
    recent = store.create_job(stage="prod", state="running", created=time.time())
    store.update_job(recent, state="succeeded", finished=time.time())
    store.audit("U1", "old", StageKey("svc", "prod"), job)
    store.db.execute("UPDATE audit SET at = 1.0")
    store.audit("U1", "new", StageKey("svc", "prod"), recent)
    counts = store.prune(before=time.time() - 86400)
    assert counts["jobs"] == 1 and counts["output"] > 0 and counts["audit"] == 1
    assert store.job(job) is None and store.job(recent) is not None
    assert [a.action for a in store.audit_trail()] == ["new"]


def test_the_plugin_cache_evicts_the_least_recently_used_sets(tmp_path):
    cache = PluginCache(tmp_path / "cache", background=lambda chore: None, max_bytes=2_500_000)
    for n, key in enumerate(("old", "mid", "new")):
        installed = tmp_path / f"src-{key}" / "node_modules"
        installed.mkdir(parents=True)
        (installed / "blob").write_bytes(os.urandom(1_000_000))
        cache.store(key, installed)
        os.utime(cache.root / key / ".used", (n, n))
    cache._touch("old")  # used just now: it stays, "mid" is the least recently used
    assert cache.evict() == ["mid"]
    assert sorted(p.name for p in cache.root.iterdir()) == ["new", "old"]


def test_job_states_move_only_along_the_written_down_transitions(tmp_path):
    from bot.core.jobs import IllegalTransition, JobState

    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(IllegalTransition):
        store.create_job(stage="prod", state="succeeded")  # a job starts as a plan or a run
    plan = store.create_job(stage="prod", state="pending")
    with pytest.raises(IllegalTransition, match="cannot go from pending to succeeded"):
        store.update_job(plan, state="succeeded")  # a plan nobody approved never succeeded
    assert store.claim(plan, "pending", "withdrawn")
    with pytest.raises(IllegalTransition):
        store.update_job(plan, state="running")  # withdrawn is final
    job = store.job(plan)
    assert job.state is JobState.WITHDRAWN and job.state.final and not job.ran


def test_a_bounded_queue_says_no_instead_of_growing():
    release = threading.Event()
    work = BoundedWork(1, 2, "t")
    accepted = [work.submit(release.wait) for _ in range(5)]
    assert accepted == [True, True, True, False, False]
    release.set()


def test_the_app_cards_stay_inside_slacks_limits_at_50_services_and_keep_text_as_text():
    services = [{"service": f"svc-{n:02d}-{HOSTILE}", "status": "roll" if n % 5 else "no_build",
                 "note": HOSTILE, "from": [SHA, "b-1"], "to": [SHA2, "b-2"], "commits": 3, "plugins": HOSTILE,
                 "removed": 1, "account": HOSTILE} for n in range(50)]
    shown = {"ref": "abc1234", "commit": SHA, "services": services, "warnings": [HOSTILE] * 20,
             "phases": [[s["service"] for s in services[:25]], [s["service"] for s in services[25:]]]}
    card = kit.app_plan_blocks(9, AppCard.from_dict(shown), "prod", "U-ANA", 100.0, HOSTILE, True, [HOSTILE] * 9)
    assert len(card) <= 50 and len(json.dumps(card)) < 40_000
    for block in card:
        for text in mrkdwn_texts([block]):
            assert len(text) <= 3000, text[:80]
    assert "…and" in json.dumps(card, ensure_ascii=False)  # rows that do not fit are counted
    assert_inert(card)
    parent = Job.from_row({"id": 9, "stage": "prod", "state": "failed", "service": "*", "requested_by": "U-ANA",
                           "approved_by": HOSTILE, "reason": HOSTILE, "started": 1.0, "finished": 9.0,
                           "created": 1.0, "plan_json": json.dumps(shown)})
    parts = [Job.from_row({"id": 10 + n, "stage": "prod", "state": ("succeeded", "failed", "skipped")[n % 3],
                           "service": s["service"], "target_commit": SHA2, "live_commit": SHA, "app_id": 9,
                           "started": 1.0, "finished": 2.0, "created": 1.0}) for n, s in enumerate(services)]
    progress = kit.app_progress_blocks(parent, parts, {}, 10.0)
    assert len(progress) <= 50
    assert_inert(progress)
    assert any(b["type"] == "actions" and b["elements"][0]["action_id"] == "undo_app" for b in progress)
    assert_inert([kit.section(kit.app_details_text(AppCard.from_dict(shown))[:2900])])


def test_an_app_card_after_a_restart_says_so_and_keeps_the_way_back():
    from bot.engine.app import who_is_where

    rows = {name: Job.from_row({"id": 10 + n, "stage": "prod", "service": name, "app_id": 9, **row})
            for n, (name, row) in enumerate({"worker": {"state": "succeeded", "recorded": 1},
                                             "api": {"state": "interrupted", "reason": "deploy: cut"},
                                             "billing": {"state": "skipped"}}.items())}
    where = who_is_where(rows)
    assert where == "at the target: worker; interrupted: api (deploy: cut); unchanged (not started): billing"
    shown = {"ref": "abc1234", "commit": SHA, "phases": [["worker"], ["api", "billing"]], "services": [
        {"service": n, "status": "roll"} for n in rows]}
    app = Job.from_row({"id": 9, "stage": "prod", "state": "interrupted", "service": "*", "requested_by": "U-ANA",
                        "reason": f"interrupted by a restart: {where}", "started": 1.0, "finished": 9.0,
                        "created": 1.0, "plan_json": json.dumps(shown)})
    parts = [Job.from_row({"id": 10 + n, "stage": "prod", "state": row.state, "service": name, "app_id": 9,
                           "target_commit": SHA2, "live_commit": SHA, "created": 1.0})
             for n, (name, row) in enumerate(rows.items())]
    card = kit.app_progress_blocks(app, parts, {}, 10.0)
    text = json.dumps(card, ensure_ascii=False)
    assert "⚠️ App rollback interrupted by a restart: prod" in text
    assert "Where each service is:* interrupted by a restart: at the target: worker" in text
    assert any(b["type"] == "actions" and b["elements"][0]["action_id"] == "undo_app" for b in card)


def test_the_terminals_status_names_each_runs_process_and_keeps_outside_text_inert():
    from bot.core.keys import StageKey
    from bot.core.stage_index import Mark
    from bot.terminal.render import render_status

    app = Job.from_row({"id": 4, "stage": "prod", "state": "running", "service": "*", "requested_by": "U-ANA",
                        "approved_by": "U-CY", "target_commit": SHA, "started": 100.0, "created": 90.0,
                        "pid": 4242, "host": "bot-1"})
    parts = {4: [Job.from_row({"id": 5, "stage": "prod", "state": "running", "service": "worker", "app_id": 4}),
                 Job.from_row({"id": 6, "stage": "prod", "state": "approving", "service": "api", "app_id": 4})]}
    freeze = {StageKey("api", "prod"): Mark("ci\x1b[2J", "rolled back \x1b]0;owned\x07", 50.0)}
    text = render_status([app], freeze, 160.0, lambda who: {"U-CY": "Cy"}.get(who, who), parts)
    assert f"#4 the app in prod → {SHA[:7]}, by Cy, for 1m, process 4242 on bot-1" in text
    assert "      worker: running" in text and "      api: waiting for its phase" in text
    assert "api prod: by ci?[2J 1m ago: rolled back ?]0;owned?" in text and "\x1b" not in text
    assert render_status([], {}, 0.0) == "Running rollbacks: none\nFrozen stages: none"


def test_masking_a_hostile_line_costs_time_in_proportion_to_its_length():
    from bot.core.masking import Masker

    # Each "a." is a word boundary where the old URL pattern scanned to the end of the line: 2 MB of it took
    # about 25 minutes; bounded repetitions make it one pass
    line = "a." * 1_000_000 + "://" + "b" * 600 + "@host"
    assert Masker(["token-abcdef-123"])(line) == line  # nothing in it is a secret, and it comes back whole


def test_a_secret_the_line_cut_went_through_is_masked_from_its_first_character():
    from bot.core.masking import LINE_LIMIT, Masker, cut_line

    secret = "sk-live-0123456789abcdef"
    head = ("x" * (LINE_LIMIT - 12) + secret)[:LINE_LIMIT]  # the cut falls inside the secret
    assert head.endswith("sk-live-0123")
    masked = Masker([secret])(cut_line(head, 500))
    assert "sk-live" not in masked and masked.endswith("x***" + " … [line cut: 500 more characters]")


def test_a_cached_plugin_set_changed_after_it_was_built_is_dropped_not_run(tmp_path):
    """What a dev job (unsandboxed, or anything with the host's rights) would do: rewrite a plugin in the cache."""
    installed = tmp_path / "job" / "node_modules"
    (installed / "plugin").mkdir(parents=True)
    (installed / "plugin" / "index.js").write_text("module.exports = 'pristine';\n")
    (installed / ".bin").mkdir()
    (installed / ".bin" / "serverless").symlink_to("../plugin/index.js")
    cache = PluginCache(tmp_path / "cache").for_account("account 111111111111")
    master = cache.adopt("k1", installed)
    assert cache.path("k1") == master and "k1" not in cache.dropped  # as built: used
    (master / "plugin" / "index.js").write_text("module.exports = 'poisoned';\n")
    assert cache.path("k1") is None  # the next job installs afresh instead of running it
    assert "no longer matches the content hash recorded when it was built" in cache.dropped["k1"]
    assert not (cache.root / "k1").exists()

    # unsandboxed: a job's own copy is a spare made earlier; a spare changed since is not handed out
    other = tmp_path / "job2" / "node_modules"
    (other / "plugin").mkdir(parents=True)
    (other / "plugin" / "index.js").write_text("module.exports = 'pristine';\n")
    cache.store("k2", other)
    spare = next((cache.root / "k2").glob("spare-*")) / "node_modules"
    (spare / "plugin" / "index.js").write_text("module.exports = 'poisoned!';\n")
    target = tmp_path / "job3" / "node_modules"
    assert cache.restore("k2", target)
    assert (target / "plugin" / "index.js").read_text() == "module.exports = 'pristine';\n"

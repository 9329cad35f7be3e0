"""The alarm watch against moto's CloudWatch (put_metric_alarm, set_alarm_state): a CI deploy is watched,
an alarm entering ALARM is reported once, auto_rollback acts once and never after a rollback, an alarm
after the window says nothing, a restart resumes, and a rollback settles under watch."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import boto3
import pytest

from bot.core.actor import Actor
from bot.core.config import load_settings
from bot.core.records import Watch, WatchPurpose
from bot.engine.build import Fleet
from bot.engine.service import RollbackService
from bot.engine.watch import make_watcher
from tests.conftest import fast_code, live_code
from tests.support.waiting import wait_for

ALARM = "hello-5xx"


def policy(auto: bool) -> str:
    return f'[stages.prod]\nalarms = ["{ALARM}"]\nauto_rollback = {"true" if auto else "false"}\n'


@pytest.fixture
def cloudwatch(aws_env):
    cw = boto3.client("cloudwatch")
    cw.put_metric_alarm(AlarmName=ALARM, MetricName="5XXError", Namespace="AWS/ApiGateway", Statistic="Sum",
                        Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
    return cw


@pytest.fixture
def watch(fast_prod, tmp_path):
    """A watcher on the fast service's prod, with a clock the test moves; ``watch(auto)`` makes one."""
    made = []

    def make(auto: bool = False, clock=None, more: str = ""):
        (tmp_path / "policy.toml").write_text(policy(auto) + more)
        s = fast_prod.settings
        settings = load_settings({**dict(s.child_env), "ROLLBACK_CONFIG": str(tmp_path / "policy.toml"),
                                  "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_SERVICE": "hello-service",
                                  "ROLLBACK_PREFIX": s.prefix, "ROLLBACK_REPO": s.repo,
                                  "ROLLBACK_DATA_DIR": str(s.data_dir),
                                  "ROLLBACK_DEPLOY_COMMAND": " ".join(s.deploy_command)}, needs=["engine"])
        fast_prod.settings = settings  # the same engine (its store, its runner), under this policy
        service = RollbackService(Fleet.of_one(fast_prod), settings.policy)
        watcher = make_watcher(service, clock or time.time)
        events = []
        watcher.listeners.append(events.append)
        made.append(watcher)
        return watcher, events, service

    return make


def seen_v1_live(engine, fast_service) -> None:
    """The bot ran when CI deployed v1 (fast_prod deploys before any bot starts): what its watch noted then."""
    from bot.core.keys import StageKey

    v1 = engine.artifacts.read_index("prod").find(fast_service.commits["v1"], "b-v1")
    engine.store.note_seen_live(StageKey("hello-service", "prod"), v1.commit, v1.build_id, v1.sha256,
                                "watched going live through a CI deploy")


def test_an_alarm_after_a_deploy_is_reported_once_and_a_rollback_settles_under_watch(
        watch, cloudwatch, fast_prod, fast_service):
    now = [time.time()]
    watcher, events, service = watch(auto=False, clock=lambda: now[0])
    watcher.poll()
    assert [w.kind for w in fast_prod.store.watches()] == ["deploy"] and events == []
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1% for 1 minute")
    watcher.poll()
    watcher.poll()  # said once, not per poll
    assert [(e.kind, e.text) for e in events] == [
        ("alarm", f"`{ALARM}` went into ALARM 0 min after build b-v2 ({fast_service.commits['v2'][:7]}) went live.")]
    assert service.store.jobs() == []  # no auto_rollback in this policy: a person decides

    ana = Actor.at_terminal("ana")
    job_id = service.approve(service.request(service.key("prod"), "previous", ana).job_id, ana).job.id
    fast_prod.jobs.wait(job_id, timeout=60)
    assert live_code() == fast_code(fast_service, "v1")
    settle = [w for w in fast_prod.store.watches() if w.kind == "settle"]
    assert len(settle) == 1 and settle[0].job_id == job_id
    watcher.poll()  # the alarm is still in ALARM, then recovers before the settle period ends
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="back to normal")
    watcher.poll()
    now[0] += 601
    watcher.poll()
    assert events[-1].kind == "settled" and events[-1].text == "alarms OK for 10 min after the rollback"
    assert fast_prod.store.job(job_id).settle == "alarms OK for 10 min after the rollback"


def test_auto_rollback_acts_once_with_the_alarm_in_the_audit_and_never_after_a_rollback(
        watch, cloudwatch, fast_prod, fast_service):
    watcher, events, service = watch(auto=True)
    seen_v1_live(fast_prod, fast_service)
    watcher.poll()
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    watcher.poll()
    auto = [e for e in events if e.kind == "auto"]
    assert len(auto) == 1 and auto[0].job_id and "without waiting for a person" in auto[0].text
    fast_prod.jobs.wait(auto[0].job_id, timeout=60)
    assert live_code() == fast_code(fast_service, "v1")
    job = fast_prod.store.job(auto[0].job_id)
    assert job.state == "succeeded" and job.approved_by == f"alarm:{ALARM}" and job.origin == "alarm"
    start = next(a for a in fast_prod.store.audit_trail("prod") if a.action == "rollback.start")
    assert start.actor == f"alarm:{ALARM}" and start.detail["alarm_reason"] == "5xx over 1%"

    # the alarm flaps: no second rollback for this deploy; and the live build now came from a rollback
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="ok")
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="again")
    watcher.poll()
    watcher.poll()
    assert len([e for e in events if e.kind == "auto"]) == 1
    assert [j.id for j in fast_prod.store.jobs()] == [auto[0].job_id]
    # the deploy's watch ended with the rollback; the rollback's result is settled, not watched as a deploy
    assert [(w.kind, w.build) for w in fast_prod.store.watches()] == [("settle", "b-v1")]
    assert [w.state for w in fast_prod.store.watches(active=False) if w.kind == "deploy"] == ["ended"]


def test_an_alarm_after_the_window_says_nothing_and_a_restart_resumes_the_watch(watch, cloudwatch, fast_prod):
    late = [time.time() + 1801]
    watcher, events, _ = watch(auto=True, clock=lambda: late[0])
    watcher.poll()
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="late")
    watcher.poll()
    assert events == [] and fast_prod.store.watches() == [] and fast_prod.store.jobs() == []

    # a watch started, then the bot restarted: the new watcher takes it over and still acts once
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="ok")
    first, _, _ = watch(auto=True)
    first.poll()
    restarted, events, _ = watch(auto=True)
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="after the restart")
    restarted.poll()
    assert len(fast_prod.store.watches(active=False)) == 1  # the same watch, not a second one
    assert [e.kind for e in events] == ["alarm", "auto"]
    fast_prod.jobs.wait(events[-1].job_id, timeout=60)


def test_in_slack_an_alarm_offers_the_rollback_and_the_card_ends_with_the_settle_verdict(
        fast_prod, fast_workspace, cloudwatch, fast_service, tmp_path):
    from tests.support.slack_session import CHANNEL, all_text, header

    ws = fast_workspace(policy(False) + 'notify_channel = "C-OPS"\n', ROLLBACK_WATCH_POLL="1", ROLLBACK_SETTLE="3")
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    alert = wait_for(lambda: next((m for m in ws.standin.messages[CHANNEL] if "🚨" in m["text"]), None), 30,
                     "the alarm's post")
    assert f"`{ALARM}` went into ALARM 0 min after build b-v2 ({fast_service.commits['v2'][:7]}) went live" \
        in alert["text"]
    n = ws.cards()
    ws.ana.click(alert, "plan_build")
    card = ws.card(n)
    assert header(card) == f"Roll back prod to {fast_service.commits['v1'][:7]}?"
    ws.bo.click(card, "approve")
    wait_for(lambda: live_code() == fast_code(fast_service, "v1"), 60, "Lambda back on v1")
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="OK", StateReason="recovered")  # the rollback helped
    wait_for(lambda: "👀" in all_text(ws.standin.message(CHANNEL, card["ts"])), 60, "the settle verdict")
    assert "alarms OK for 3 s after the rollback" in all_text(ws.standin.message(CHANNEL, card["ts"]))


def test_the_cli_lists_the_watched_alarms_and_the_home_shows_the_watches(watch, cloudwatch, fast_prod, tmp_path):
    import subprocess
    import sys

    from bot.slack import blocks as kit

    watcher, _, service = watch(auto=False)
    watcher.poll()
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    watcher.poll()
    s = fast_prod.settings
    env = {**s.child_env, "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_SERVICE": s.service, "ROLLBACK_PREFIX": s.prefix,
           "ROLLBACK_REPO": s.repo, "ROLLBACK_DATA_DIR": str(s.data_dir), "ROLLBACK_CONFIG": str(s.config_path)}
    shown = subprocess.run([sys.executable, "-m", "bot", "alarms", "prod"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"ALARM              {ALARM}" in shown.stdout and "5xx over 1%" in shown.stdout
    assert "watching build b-v2" in shown.stdout and "(deploy)" in shown.stdout
    view = service.overview()
    home = "\n".join(b.get("text", {}).get("text", "") for b in kit.home_blocks(
        view.stages, view.jobs, time.time(), view.policy_configured, view.several, view.watches))
    assert "*Watching*" in home and f"🚨 in ALARM: {ALARM}" in home



def test_cloudwatch_trouble_backs_off_and_is_said_once(watch, cloudwatch, fast_prod):
    import http.server
    import threading

    class Throttling(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = (b'<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded'
                    b"</Message></Error></ErrorResponse>")
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        now = [time.time()]
        watcher, events, _ = watch(auto=False, clock=lambda: now[0])
        throttled = f"http://127.0.0.1:{server.server_address[1]}"  # CloudWatch only; S3 and STS are moto
        own = dict(fast_prod.settings.child_env)
        watcher.reader.env_for = lambda stage: {**own, "AWS_ENDPOINT_URL_CLOUDWATCH": throttled}
        for _ in range(5):
            watcher.poll()
            now[0] += 1
        errors = [e for e in events if e.kind == "error"]
        assert len(errors) == 1 and "Throttling" in errors[0].text and "retrying with backoff" in errors[0].text
        w = fast_prod.store.watches()[0]
        assert w.failures == 1 and w.next_check > now[0]  # it waits before asking again
    finally:
        server.shutdown()
        server.server_close()


def test_in_slack_an_automatic_rollback_says_what_it_did_and_shows_its_card(
        fast_prod, fast_workspace, cloudwatch, fast_service):
    from tests.support.slack_session import CHANNEL, all_text, header

    seen_v1_live(fast_prod, fast_service)
    ws = fast_workspace(policy(True) + 'notify_channel = "C-OPS"\n', ROLLBACK_WATCH_POLL="1")
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    said = wait_for(lambda: next((m for m in ws.standin.messages[CHANNEL] if "🤖" in m["text"]), None), 30,
                    "the automatic rollback's post")
    assert f"`{ALARM}` went into ALARM (5xx over 1%): rolling hello-service prod back to" in said["text"]
    assert "without waiting for a person" in said["text"]
    card = wait_for(lambda: next((m for m in ws.standin.messages[CHANNEL] if header(m).startswith("✅")), None), 60,
                    "its card, finished")
    assert f"requested by alarm:{ALARM} approved by alarm:{ALARM}" in all_text(card)
    assert live_code() == fast_code(fast_service, "v1")
    assert sum("🤖" in m["text"] for m in ws.standin.messages[CHANNEL]) == 1  # once for this deploy


def stack_with_alarm(stack: str, alarm: str) -> None:
    """A stack with an alarm of its own, as serverless-plugin-aws-alerts declares one."""
    import json

    template = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"FunctionErrors": {
        "Type": "AWS::CloudWatch::Alarm", "Properties": {
            "AlarmName": alarm, "MetricName": "Errors", "Namespace": "AWS/Lambda", "Statistic": "Sum", "Period": 60,
            "EvaluationPeriods": 1, "Threshold": 1, "ComparisonOperator": "GreaterThanThreshold"}}}}
    boto3.client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps(template))


def test_the_alarms_of_the_services_own_stack_are_watched_too(watch, cloudwatch):

    stack_with_alarm("hello-service-prod", "hello-service-prod-errors")
    watcher, _, _ = watch(auto=False)
    names = [a.name for a in watcher.reader.read("prod", "hello-service", "hello-service-prod")]
    assert names == [ALARM, "hello-service-prod-errors"]  # the config's, and the stack's own


def test_alarm_names_and_reasons_from_cloudwatch_reach_slack_as_text(fast_prod, cloudwatch):
    """An alarm's name and state reason are written by whoever owns the account: data, never markup."""
    from slack_sdk import WebClient

    from bot.adapters.alarms import AlarmState
    from bot.core.keys import StageKey
    from bot.engine.watch import WatchEvent
    from bot.playground.slack import SlackStandIn
    from bot.slack.notifier import Notifier
    from bot.slack.watch_posts import WatchPoster
    from tests.test_trust_rules import HOSTILE, assert_inert

    standin = SlackStandIn()
    try:
        settings = fast_prod.settings
        service = RollbackService(Fleet.of_one(fast_prod), settings.policy)
        poster = WatchPoster(Notifier(WebClient(token="xoxb-t", base_url=standin.api_url)), service,
                             replace(settings, channel="C-OPS"))
        watch = Watch(1, "hello-service", "prod", WatchPurpose.DEPLOY, "a" * 40, "b-v2", 1.0, 99.0)
        alarm = AlarmState(HOSTILE, "ALARM", HOSTILE, 2.0)
        key = StageKey("hello-service", "prod")
        for kind in ("alarm", "auto", "error", "summary"):
            poster(WatchEvent(kind, key, watch, f"`{HOSTILE}` {HOSTILE}", alarm, keys=(key,)))
        posted = standin.messages["C-OPS"]
        assert len(posted) == 4 and "on `prod`. A stage's builds and the way back: `/rollback <stage>`" in posted[3][
            "text"].replace("&lt;", "<").replace("&gt;", ">")
        for message in posted:
            assert "<!channel>" not in message["text"] and "<https://evil" not in message["text"]
            as_text = [{"type": "section", "text": {"type": "mrkdwn", "text": message["text"]}}]
            assert_inert(message["blocks"] or as_text)
    finally:
        standin.stop()


def test_a_deploy_to_a_stack_named_by_provider_stack_name_is_watched_under_that_name(watch, fast_prod, fast_service,
                                                                                      tmp_path):
    import json

    from tests.support.fast_service import fast_package

    package = fast_package(tmp_path / "pkg-named", "v4")
    state = json.loads((package / "serverless-state.json").read_text())
    state["service"]["provider"]["stackName"] = "hello-api-stack"  # serverless.yml's provider.stackName
    (package / "serverless-state.json").write_text(json.dumps(state))
    stack_with_alarm("hello-api-stack", "hello-api-stack-errors")
    fast_prod.artifacts.publish("prod", fast_service.commits["v3"], package, build_id="b-named")
    fast_prod.artifacts.mark_deployed("prod", fast_service.commits["v3"], "b-named", by="ci")
    watcher, events, _ = watch(auto=False)
    watcher.poll()
    watched = [w for w in fast_prod.store.watches() if w.build == "b-named"]
    assert len(watched) == 1 and watched[0].stack == "hello-api-stack"
    boto3.client("cloudwatch").set_alarm_state(AlarmName="hello-api-stack-errors", StateValue="ALARM",
                                               StateReason="errors")
    watcher.poll()
    assert [e.text for e in events if e.kind == "alarm"] == [
        f"`hello-api-stack-errors` went into ALARM 0 min after build b-named ({fast_service.commits['v3'][:7]}) "
        "went live."]


def test_a_forged_previous_is_not_deployed_without_a_person_and_the_post_says_why(
        watch, cloudwatch, fast_prod, fast_service, s3, tmp_path):
    """Someone who can write only to the bucket publishes a build with correct metadata and rewrites the
    history so that `previous` names it, then waits for an alarm. The bot never saw that build live."""
    import json

    from bot.core.stage_index import LiveRecord
    from tests.support.fast_service import fast_package

    seen_v1_live(fast_prod, fast_service)  # v1 is a real, seen build: the forgery must not hide behind it
    evil = fast_package(tmp_path / "pkg-evil", "evil")
    fast_prod.artifacts.publish("prod", fast_service.commits["v3"], evil, build_id="b-evil")

    def forge(index):
        v2 = index.history[0]
        index.history = [v2, LiveRecord(fast_service.commits["v3"], "b-evil", v2.at - 10, "ci")] + index.history[1:]

    fast_prod.artifacts.update_index("prod", forge)
    assert fast_prod.plan("prod", "previous").target.build_id == "b-evil"  # the forgery took
    watcher, events, service = watch(auto=True)
    watcher.poll()
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    watcher.poll()
    auto = [e for e in events if e.kind == "auto"]
    assert len(auto) == 1 and auto[0].job_id is None
    assert "which this bot never saw live" in auto[0].text and "b-evil" in auto[0].text
    assert "only a person may roll prod back to it" in auto[0].text
    assert fast_prod.store.jobs() == [] and live_code() == fast_code(fast_service, "v2")
    assert [e.kind for e in events if e.kind == "alarm"] == ["alarm"]  # the alarm itself is still posted
    skipped = [a for a in fast_prod.store.audit_trail("prod") if a.action == "auto_rollback.skipped"]
    assert skipped and "never saw live" in json.dumps(skipped[0].detail)


def test_a_build_a_rollback_verified_may_be_an_automatic_target(watch, cloudwatch, fast_prod, fast_service):
    """A person rolls back to v1 (verified), lifts the freeze when the fix is in, and CI deploys v3: an
    alarm on v3 may go back to v1 with no person, since the bot itself saw v1 run."""
    from tests.support.fast_service import deploy

    ana, bo = Actor.at_terminal("ana"), Actor.at_terminal("bo")
    _, _, service = watch(auto=False)
    job_id = service.approve(service.request(service.key("prod"), "previous", ana).job_id, bo).job.id
    assert fast_prod.jobs.wait(job_id, timeout=60).state == "succeeded"
    service.unfreeze(service.key("prod"), bo)
    deploy(fast_service.packages["v3"])
    fast_prod.artifacts.mark_deployed("prod", fast_service.commits["v3"], "b-v3", by="ci")
    watcher, events, _ = watch(auto=True)
    watcher.poll()
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    watcher.poll()
    auto = [e for e in events if e.kind == "auto"]
    assert auto and auto[0].job_id, [e.text for e in events]
    assert fast_prod.jobs.wait(auto[0].job_id, timeout=60).state == "succeeded"
    assert live_code() == fast_code(fast_service, "v1")


def test_a_malformed_stage_folder_never_stops_the_watch_status_or_the_home_for_the_others(
        watch, cloudwatch, fast_prod, fast_service, s3, fast_workspace):
    from tests.conftest import BUCKET

    s3.put_object(Bucket=BUCKET, Key="rollback/hello-service/dev/index.json", Body=b"{not json")
    watcher, events, service = watch(auto=False, more="\n[stages.dev]\n")
    watcher.poll()
    watcher.poll()
    cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="5xx over 1%")
    watcher.poll()
    assert [e.kind for e in events] == ["alarm"]  # prod is still watched
    status = service.status("")
    assert [u.split(":")[0] for u in status.unreadable] == ["dev"]
    ws = fast_workspace(policy(False) + "\n[stages.dev]\n")
    said = ws.says(ws.ana, "status")
    assert "*Frozen stages*" in said and "⚠️ Could not read, so not shown: dev:" in said
    home = service.overview()
    assert [i.stage for i, _ in home.stages] == ["prod"] and home.unreadable[0].startswith("dev:")


FLEET = '[services.api]\ndir = "services/api"\n\n[services.worker]\ndir = "services/worker"\n\n'


def test_a_stage_wide_alarm_prefix_must_name_its_services_on_a_bot_of_several(tmp_path):
    from bot.core.config import ConfigError

    config = tmp_path / "rollback.toml"
    config.write_text(FLEET + '[stages.prod]\nalarm_prefix = "prod-"\nauto_rollback = true\n')
    with pytest.raises(ConfigError) as refused:
        load_settings({"ROLLBACK_BUCKET": "b-bucket", "ROLLBACK_REPO": "/r", "ROLLBACK_CONFIG": str(config)},
                      needs=["engine"])
    text = str(refused.value)
    assert "[stages.prod]: alarm_prefix = 'prod-' would offer (or run) rollbacks of every service" in text
    assert 'alarm_services = ["api", …] (services here: api, worker)' in text

    config.write_text(FLEET + '[stages.prod]\nalarm_prefix = "prod-"\nalarm_services = ["api"]\n')
    catalog = load_settings({"ROLLBACK_BUCKET": "b-bucket", "ROLLBACK_REPO": "/r", "ROLLBACK_CONFIG": str(config)},
                            needs=["engine"]).catalog
    assert catalog.alarm_spec("prod", "api") == ((), "prod-")
    assert catalog.alarm_spec("prod", "worker") == ((), "")  # worker's own stack's alarms only


FLOOD = 12  # stages whose deploys all alarm in one round


def flood(watch, cloudwatch, fast_prod, fast_service):
    """Twelve stages, each just deployed by CI with its own alarm named for the watch, all in ALARM."""
    more = "".join(f'[stages.s{n}]\nalarms = ["flood-s{n}"]\n' for n in range(FLOOD))
    watcher, events, service = watch(more=more)
    b = fast_service.packages["v2"]
    for n in range(FLOOD):
        fast_prod.artifacts.publish(f"s{n}", fast_service.commits["v2"], b, build_id="b-v2", author="Ana Dev",
                                    message="v2", deployed=True, by="ci")
        cloudwatch.put_metric_alarm(AlarmName=f"flood-s{n}", MetricName="5XXError", Namespace="AWS/ApiGateway",
                                    Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
                                    ComparisonOperator="GreaterThanThreshold")
    watcher.poll()  # the deploys are watched
    for n in range(FLOOD):
        cloudwatch.set_alarm_state(AlarmName=f"flood-s{n}", StateValue="ALARM", StateReason="5xx over 1%")
    return watcher, events, service


def test_an_alarm_flood_is_said_in_a_few_posts_and_one_summary_per_round(watch, cloudwatch, fast_prod, fast_service):
    watcher, events, _ = flood(watch, cloudwatch, fast_prod, fast_service)
    watcher.poll()
    alarms = [e for e in events if e.kind == "alarm"]
    [summary] = [e for e in events if e.kind == "summary"]
    assert len(alarms) == 5 and summary.text == f"{FLOOD - 5} more alarms went into ALARM in this round"
    assert {k.stage for k in summary.keys} | {e.key.stage for e in alarms} == {f"s{n}" for n in range(FLOOD)}
    watcher.poll()
    assert len(events) == 6  # each alarm said once, in its post or in the summary


def test_a_slack_that_hangs_never_holds_up_the_watch_and_what_it_dropped_is_said(
        watch, cloudwatch, fast_prod, fast_service):
    watcher, events, _ = flood(watch, cloudwatch, fast_prod, fast_service)
    events.clear()
    slack_up = threading.Event()
    watcher.listeners[:] = [lambda e: (slack_up.wait(60), events.append(e))]  # every post hangs until Slack answers
    watcher.poll_every = 0.05
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("bot.engine.watch.POST_QUEUE", 3)
            loop.start()
            wait_for(lambda: all(w.reported for w in fast_prod.store.watches() if w.stage.startswith("s")) or None,
                     30, "every alarm to be read while Slack hangs")  # the rounds went on
            wait_for(lambda: watcher._dropped or None, 10, "posts past the queue to be dropped")
            slack_up.set()
            for n in range(FLOOD):  # new alarms, once Slack answers again: said, with what was dropped
                cloudwatch.set_alarm_state(AlarmName=f"flood-s{n}", StateValue="OK", StateReason="ok")
            fast_prod.artifacts.publish("s0", fast_service.commits["v1"], fast_service.packages["v1"], build_id="b-v1",
                                        author="Ana Dev", message="v1", deployed=True, by="ci")
            cloudwatch.set_alarm_state(AlarmName="flood-s0", StateValue="ALARM", StateReason="again")
            said = wait_for(lambda: [e.text for e in events if "watch posts were dropped" in e.text] or None, 30,
                            "the drop to be said")
    finally:
        slack_up.set()
        stop.set()
        loop.join(timeout=10)
    assert "Slack did not keep up" in said[0]

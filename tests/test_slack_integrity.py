"""What a request from Slack may not do, tried with signed requests into the real Bolt app: a replayed
request (the same signature, within Bolt's 5 minutes) starts nothing twice, and an Approve button works
only on the card of the plan it approves."""

from __future__ import annotations

import copy
import time
import urllib.parse

from tests.conftest import fast_code, live_code
from tests.support.slack_session import CHANNEL, all_text
from tests.support.waiting import wait_for

POLICY = '[stages.prod]\nrequesters = ["U-ANA"]\napprovers = ["U-BO"]\n'


def test_a_replayed_slash_command_posts_one_card(fast_prod, fast_workspace):
    ws = fast_workspace(POLICY)
    body = urllib.parse.urlencode({
        "token": "unused", "team_id": "T1", "team_domain": "test", "channel_id": CHANNEL, "channel_name": "ops",
        "user_id": "U-ANA", "user_name": "u-ana", "command": "/rollback", "text": "prod previous",
        "api_app_id": "A1", "response_url": ws.standin.response_url("U-ANA"), "trigger_id": "trig-1"})
    stamp = str(int(time.time()))
    before = ws.cards()
    assert ws.ana._post(body, timestamp=stamp) == 200
    ws.card(before)  # the plan card
    assert ws.ana._post(body, timestamp=stamp) == 200  # the same signed request, sent again (a replay)
    assert ws.ana._post(body, timestamp=stamp) == 200
    time.sleep(1.5)
    assert ws.cards() == before + 1
    pending = [j for j in ws.engine.store.jobs(limit=10) if j.state == "pending"]
    assert len(pending) == 1
    assert ws.ana.command("prod previous") == 200  # a new request (new timestamp, new signature) still works
    wait_for(lambda: ws.cards() == before + 2, 30, "the second card")


def test_an_approve_button_copied_onto_another_message_approves_nothing(fast_prod, fast_workspace, fast_service):
    ws = fast_workspace(POLICY)
    card = ws.posts_card(ws.ana, "prod previous")
    elsewhere = copy.deepcopy(card.first)
    elsewhere["ts"] = "1700000000.000100"  # the same button, on a message that is not the job's card
    said = ws.clicks(ws.bo, elsewhere, "approve")
    assert "That Approve button is not on the card of job" in said and "Nothing was deployed" in said
    assert [j.state for j in ws.engine.store.jobs(limit=5)] == ["pending"]
    refused = [a for a in ws.engine.store.audit_trail("prod") if a.action == "approve.refused"]
    assert refused and refused[0].actor == "U-BO"
    ws.bo.click(card.first, "approve")  # on its own card it works
    done = card.becomes("✅", timeout=60)
    assert "Rolled back" in all_text(done)
    assert live_code() == fast_code(fast_service, "v1")


def test_a_notification_index_json_places_in_another_channel_is_never_edited(fast_prod, fast_workspace):
    """index.json says v2's deploy notification is a message in C-SECRET (a bucket writer put it there):
    the rollback that supersedes v2 edits nothing there."""
    ws = fast_workspace(POLICY)
    planted = {"ts": "1700000000.000300", "text": "a private message", "blocks": [], "user": "U-X",
               "thread_ts": None, "updates": 0}
    ws.standin.messages["C-SECRET"].append(planted)

    def plant(index):
        index.history[0].notice = "C-SECRET:1700000000.000300"

    ws.engine.artifacts.update_index("prod", plant)
    card = ws.posts_card(ws.ana, "prod previous")
    ws.bo.click(card.first, "approve")
    card.becomes("✅", timeout=60)
    time.sleep(1.0)  # the superseded edit follows the card's last update
    assert ws.standin.messages["C-SECRET"][0]["updates"] == 0
    assert ws.standin.messages["C-SECRET"][0]["text"] == "a private message"

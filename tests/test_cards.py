"""What an app card showed, as a typed snapshot: it survives being stored, and a stored one that was
tampered with or is malformed reads as an empty value, never as a crash in a face."""

from __future__ import annotations

from bot.core.cards import AppCard, ServiceRow
from bot.core.jobs import Job, JobState
from bot.slack import blocks as kit
from bot.terminal.render import render_app_plan

SHA, SHA2 = "a" * 40, "b" * 40


def test_an_app_card_reads_back_as_it_was_stored():
    card = AppCard("undo:7", SHA, (ServiceRow("api", "roll", "", (SHA, "api-2"), (SHA2, "api-1"), 2, "plugins: same",
                                              1, "111111111111"),
                                   ServiceRow("billing", "at_target", "already at its target")),
                   (("api",),), ("a warning",), True, {"api": {"target": [SHA2, "api-1", "x"]}})
    again = AppCard.parse(card.to_json())
    assert again == card and again.summary == card.summary
    assert again.moving == ["api"] and again.undo_of == 7
    job = Job(3, "prod", JobState.PENDING, service="*", plan_json=card.to_json())
    assert job.app_card == card
    assert kit.app_title(card, "prod") == "Roll the finished services of job 7 forward again in prod?"
    assert "api                  aaaaaaa → bbbbbbb (build api-1), 2 commit(s)" in render_app_plan(card, "prod")


def test_a_malformed_stored_card_is_empty_not_a_crash():
    for stored in ("not json", "[1, 2]", "", '{"services": [1, {"service": "x", "from": "oops", "commits": "9"}], '
                   '"phases": 5, "warnings": "w"}'):
        card = AppCard.parse(stored)
        assert card.moving == [] and card.phases == ()
        kit.app_plan_blocks(1, card, "prod", "U-ANA", 10.0, "anyone")  # renders
        render_app_plan(card, "prod")

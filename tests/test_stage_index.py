import pytest

from bot.core.stage_index import Artifact, IndexFormatError, Mark, RefError, StageIndex


def art(commit_prefix: str, build: str, created: float, bad: bool = False) -> Artifact:
    commit = (commit_prefix + "0" * 40)[:40]
    return Artifact(commit, build, f"k/{commit}/{build}", "0" * 64, 10, created, "dev", f"build {build}",
                    Mark("U1", "rolled back", 1.0) if bad else None)


def stage(*arts: Artifact) -> StageIndex:
    index = StageIndex(service="svc", stage="prod")
    for a in arts:
        index.add(a)
    return index


def test_builds_are_kept_newest_first_even_when_published_out_of_order():
    index = stage(art("aaaa", "1", 1), art("cccc", "3", 3), art("bbbb", "2", 2))
    assert [a.build_id for a in index.artifacts] == ["3", "2", "1"]


def test_resolve_by_full_sha_prefix_and_build_id():
    a1, a2 = art("abcd1", "41", 1), art("ef012", "42", 2)
    index = stage(a1, a2)
    assert index.resolve(a1.commit) is a1
    assert index.resolve("ABCD") is a1
    assert index.resolve("42") is a2
    assert index.resolve("ef01") is a2


def test_short_prefix_is_refused_with_what_to_do():
    index = stage(art("abcd1", "b-1", 1))
    with pytest.raises(RefError, match="at least 4 characters"):
        index.resolve("abc")


def test_ambiguous_prefix_lists_the_candidates():
    a1, a2 = art("abcd1", "1", 1), art("abcd2", "2", 2)
    index = stage(a1, a2, art("ffff", "3", 3))
    with pytest.raises(RefError, match="matches 2 builds") as err:
        index.resolve("abcd")
    assert err.value.candidates == [a2, a1]


def test_a_build_id_that_is_also_another_commits_prefix_is_ambiguous():
    a1, a2 = art("1234", "b-9", 1), art("9999", "1234", 2)
    with pytest.raises(RefError, match="matches 2 builds"):
        stage(a1, a2).resolve("1234")


def test_several_builds_of_one_commit_resolve_to_the_newest():
    old, new = art("abcd", "1", 1), art("abcd", "2", 2)
    assert stage(old, new).resolve("abcd") is new


def test_no_match_says_what_the_stage_has():
    index = stage(art("abcd", "7", 1))
    with pytest.raises(RefError, match=r"No build of stage prod matches `beef`.*abcd000 \(build 7\)"):
        index.resolve("beef")
    with pytest.raises(RefError, match="no builds yet"):
        stage().resolve("beef")


def test_previous_is_the_last_known_good_live_build_not_the_one_before_in_time():
    b1, b2, b3, b4 = art("1111", "1", 1), art("2222", "2", 2), art("3333", "3", 3), art("4444", "4", 4)
    index = stage(b1, b2, b3, b4)
    index.set_live(b1, "ci", 10)
    index.set_live(b2, "ci", 20)
    index.set_live(b4, "ci", 30)  # b3 never went live (its deploy failed, say)
    assert index.resolve("previous") is b2
    b2.bad = Mark("U1", "broke checkout", 25)
    assert index.resolve("previous") is b1


def test_previous_without_history_falls_back_to_the_newest_older_good_build():
    b1, b2, b3 = art("1111", "1", 1), art("2222", "2", 2, bad=True), art("3333", "3", 3)
    index = stage(b1, b2, b3)
    index.set_live(b3, "ci", 10)
    found, why = index.previous()
    assert found is b1 and "never recorded as live" in why


def test_previous_needs_a_live_build():
    with pytest.raises(RefError, match="no live build recorded"):
        stage(art("1111", "1", 1)).resolve("previous")
    only = art("1111", "1", 1)
    index = stage(only)
    index.set_live(only, "ci", 1)
    with pytest.raises(RefError, match="no good build older than the live one"):
        index.resolve("previous")


def test_going_live_clears_a_bad_mark_and_is_idempotent():
    b1 = art("1111", "1", 1, bad=True)
    index = stage(b1)
    assert index.set_live(b1, "U1", 5, via="rollback") is True
    assert b1.bad is None
    assert index.set_live(b1, "U1", 6) is False
    assert len(index.history) == 1


def test_json_round_trip_and_refusals():
    b1 = art("1111", "1", 1, bad=True)
    index = stage(b1)
    index.freeze = Mark("U2", "rolled back", 3.0)
    again = StageIndex.from_json(index.to_json(), "x")
    assert again == index
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        StageIndex.from_json(b"{oops", "s3://b/index.json")
    with pytest.raises(IndexFormatError, match="newer rollback-bot"):
        StageIndex.from_json(b'{"schema": 99, "service": "s", "stage": "p"}', "x")


def test_the_message_that_announced_a_build_is_remembered_and_a_forged_one_is_ignored():
    import json

    b1 = art("1111", "1", 1)
    index = stage(b1)
    index.set_live(b1, "ci", 5.0)
    assert index.note_notice(b1.commit, "1", 5.0, "C-OPS", "1700000000.000100") is True
    assert index.note_notice(b1.commit, "1", 5.0, "C-OPS", "<!channel>") is False  # not a channel and ts
    again = StageIndex.from_json(index.to_json(), "x")
    assert again.live.notice_at == ("C-OPS", "1700000000.000100")
    doc = json.loads(index.to_json())
    doc["history"][0]["notice"] = "C-OPS:1.1|<https://evil>"
    forged = StageIndex.from_json(json.dumps(doc).encode(), "x")
    assert forged.live.notice_at is None and forged.live.commit == b1.commit  # the record itself stays usable


def test_a_bad_commit_is_found_by_full_sha_or_a_7_character_prefix():
    bad = art("abcdef1", "1", 1, bad=True)
    index = stage(bad, art("1234567", "2", 2))
    assert index.bad_mark_for(bad.commit).reason == "rolled back"
    assert index.bad_mark_for("ABCDEF1").reason == "rolled back"
    assert index.bad_mark_for("abcdef") is None  # too short to trust
    assert index.bad_mark_for("1234567") is None

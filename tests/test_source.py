import git
import pytest

from bot.adapters.source import SourceError, SourceRepo, plugins_of
from tests.support.gitrepo import ServiceRepo

YML = ("service: s\nplugins:\n  - serverless-offline  # local dev\n  - 'serverless-prune-plugin'\n"
       "provider:\n  name: aws\n")


def test_plugins_are_read_in_each_form_serverless_accepts():
    assert plugins_of(YML) == ("serverless-offline", "serverless-prune-plugin")
    assert plugins_of("plugins: [a, 'b']\n") == ("a", "b")
    assert plugins_of("plugins:\n  localPath: ./x\n  modules:\n    - a\n") == ("a",)
    assert plugins_of("service: s\n") == ()
    assert plugins_of("plugins: ${file(plugins.yml)}\n") is None  # cannot tell: reported as changed
    # CloudFormation's short tags are values, not errors, wherever they stand
    cfn = "resources:\n  Outputs:\n    Arn: {Value: !GetAtt [Fn, Arn]}\n    Url: !Sub 'https://${X}'\nplugins:\n  - a\n"
    assert plugins_of(cfn) == ("a",)
    assert plugins_of('{"service": "s", "plugins": ["a", "b"]}', "serverless.json") == ("a", "b")
    assert plugins_of("plugins: [a, [b]]\n") is None


@pytest.fixture
def repo(tmp_path):
    work = ServiceRepo(tmp_path / "work")
    shas = {
        "v1": work.commit("v1", {"serverless.yml": YML, "package.json": "{}", "package-lock.json": "{}"}),
        "v2": work.commit("Fix a typo", {"handler.js": "// v2"}, author="Bo Ops"),
        "v3": work.commit("Add warmup", {"serverless.yml": YML.replace("plugins:\n", "plugins:\n  - warmup\n"),
                                         "package-lock.json": '{"warmup": 1}'}, author="Cy Dev"),
    }
    origin = tmp_path / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    source = SourceRepo(str(origin), tmp_path / "data" / "mirror.git")
    source.fetch()
    return source, shas, work, origin


def test_commits_undone_and_plugin_changes(repo):
    source, shas, *_ = repo
    undone = source.commits_between(live=shas["v3"], target=shas["v1"])
    assert [(c.sha, c.author, c.subject) for c in undone] == [
        (shas["v3"], "Cy Dev", "Add warmup"), (shas["v2"], "Bo Ops", "Fix a typo")]
    same = source.plugin_change(shas["v2"], shas["v1"])
    assert not same.changed and same.summary() == "plugin set unchanged"
    change = source.plugin_change(shas["v3"], shas["v1"])
    assert change.changed
    assert change.summary() == "plugin set changed: removes warmup; changes package-lock.json"


def test_checkout_is_a_clean_worktree_and_a_missing_commit_is_a_clear_error(repo, tmp_path):
    source, shas, work, origin = repo
    service = source.checkout(shas["v1"], tmp_path / "co")
    assert (service / "serverless.yml").read_text() == YML and not (service / "handler.js").exists()
    source.remove_checkout(tmp_path / "co")
    assert not (tmp_path / "co").exists()
    with pytest.raises(SourceError, match="is not in .*force-pushed away"):
        source.checkout("f" * 40, tmp_path / "co2")
    assert not (tmp_path / "co2").exists()


def test_fetch_sees_new_commits_and_reports_a_bad_url(repo, tmp_path):
    source, shas, work, origin = repo
    new = work.commit("v4", {"handler.js": "// v4"})
    work.repo.git.push(str(origin), "main")
    assert not source.has(new)
    source.fetch()
    assert source.has(new)
    with pytest.raises(SourceError, match="cannot fetch .*ROLLBACK_REPO"):
        SourceRepo(str(tmp_path / "nowhere"), tmp_path / "m2").fetch()


def test_a_yaml_or_ts_service_file_is_compared_too(tmp_path):
    work = ServiceRepo(tmp_path / "work")
    yaml_v1 = work.commit("v1", {"serverless.yaml": "service: s\nplugins:\n  - a\n", "handler.js": "1"})
    yaml_v2 = work.commit("v2", {"serverless.yaml": "service: s\nplugins:\n  - a\n  - b\n"})
    ts_v3 = work.commit("v3", {"serverless.ts": "export default { plugins: ['a', 'b', 'c'] }\n"})
    origin = tmp_path / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    source = SourceRepo(str(origin), tmp_path / "mirror.git")
    source.fetch()
    change = source.plugin_change(yaml_v2, yaml_v1)
    assert change.changed and change.before == ("a", "b") and change.after == ("a",)
    assert change.summary() == "plugin set changed: removes b"
    ts = source.plugin_change(ts_v3, yaml_v2)  # serverless.yaml is still there: read first, as Serverless does
    assert not ts.changed
    (work.path / "serverless.yaml").unlink()
    work.repo.index.remove(["serverless.yaml"])
    ts_only = work.repo.index.commit("only ts")
    git.Repo(origin).git.fetch(str(work.path), "+refs/heads/*:refs/heads/*")
    source.fetch()
    moved = source.plugin_change(ts_only.hexsha, yaml_v2)
    assert moved.changed and "serverless.ts → serverless.yaml (compared as a whole)" in moved.summary()
    ts_v4 = work.commit("v4", {"serverless.ts": "export default { plugins: ['a'] }\n"})
    git.Repo(origin).git.fetch(str(work.path), "+refs/heads/*:refs/heads/*")
    source.fetch()
    assert source.plugin_change(ts_v4, ts_only.hexsha).summary() == \
        "plugin set changed: changes serverless.ts (compared as a whole)"

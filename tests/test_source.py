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


def test_a_service_folder_that_links_out_of_the_checkout_is_refused(tmp_path):
    work = ServiceRepo(tmp_path / "work")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "serverless.yml").write_text(YML)
    work.commit("v1", {"README": "x"})
    (work.path / "svc").symlink_to(outside)  # committed as a link, as an attacker would
    work.repo.index.add(["svc"])
    sha = work.repo.index.commit("link the service folder out").hexsha
    origin = tmp_path / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    source = SourceRepo(str(origin), tmp_path / "mirror", service_dir="svc")
    source.fetch()
    with pytest.raises(SourceError, match="is a link out of the checkout; nothing was run"):
        source.checkout(sha, tmp_path / "co")
    assert not (tmp_path / "co").exists()


def test_hooks_never_run_and_the_token_is_in_no_argv_nor_the_mirrors_config(tmp_path):
    import socket
    import threading

    from tests.support.procs import pids_with

    work = ServiceRepo(tmp_path / "work")
    sha = work.commit("v1", {"serverless.yml": YML})
    origin = tmp_path / "origin.git"
    git.Repo.clone_from(work.path, origin, bare=True).close()
    source = SourceRepo(str(origin), tmp_path / "mirror")
    source.fetch()
    hook = tmp_path / "mirror" / "hooks" / "post-checkout"  # planted, as a job could once do
    ran = tmp_path / "hook-ran"
    hook.write_text(f"#!/bin/sh\ntouch {ran}\n")
    hook.chmod(0o755)
    source.checkout(sha, tmp_path / "co")
    assert not ran.exists()

    # a git server that accepts and never answers: look at every process while git waits on it
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: [server.accept() for _ in range(5)], daemon=True).start()
    token = "ghs_" + "GitTokenNeverInArgv42"
    slow = SourceRepo(f"https://x-access-token:{token}@127.0.0.1:{port}/org/hello.git", tmp_path / "m2", timeout=4)
    seen: list[int] = []
    watched = 0
    fetching = threading.Thread(target=lambda: pytest.raises(SourceError, slow.fetch), daemon=True)
    fetching.start()
    while fetching.is_alive():
        seen += pids_with(token)
        watched += bool(pids_with(f"127.0.0.1:{port}"))  # git's remote helper, talking to the server
    fetching.join()
    assert watched > 0, "git was never seen running against the server"
    assert seen == [], "a process showed the token in its arguments"
    assert token not in (tmp_path / "m2" / "config").read_text()
    credentials = tmp_path / "m2.credentials"
    assert credentials.stat().st_mode & 0o777 == 0o600 and token in credentials.read_text()

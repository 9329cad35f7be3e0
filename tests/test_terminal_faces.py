"""The terminal as a newcomer types it: what they typed, and what they should see. The real console
script against moto's S3 with the fast service's builds."""

from __future__ import annotations

import subprocess
import sys

from bot.core.stage_index import Mark


def run(engine, *args, service: bool = True, **extra_env) -> subprocess.CompletedProcess:
    s = engine.settings
    env = {**s.child_env, "ROLLBACK_BUCKET": s.bucket, "ROLLBACK_PREFIX": s.prefix, "ROLLBACK_REPO": s.repo,
           "ROLLBACK_DATA_DIR": str(s.data_dir), **({"ROLLBACK_SERVICE": s.service} if service else {}), **extra_env}
    return subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_naming_the_service_on_the_command_line_is_enough(fast_prod, fast_service):
    listed = run(fast_prod, "list", "--service", "hello-service", "prod", service=False)
    assert listed.returncode == 0, listed.stderr
    assert "hello-service / prod: live" in listed.stdout and "(build b-v2)" in listed.stdout
    # how a pipeline asks, on a CI runner with no catalog and no ROLLBACK_SERVICE
    checked = run(fast_prod, "check-freeze", "--service", "hello-service", "--stage", "prod", "--commit",
                  fast_service.commits["v3"], service=False)
    assert checked.returncode == 0, checked.stderr
    assert "prod: not frozen" in checked.stdout
    fast_prod.artifacts.update_index("prod", lambda i: setattr(i, "freeze", Mark("ana", "rolled back", 1.0)))
    frozen = run(fast_prod, "check-freeze", "--service", "hello-service", "--stage", "prod", service=False)
    assert frozen.returncode == 1 and "frozen by ana" in frozen.stderr
    # and nothing named at all still says what to set
    bare = run(fast_prod, "list", "prod", service=False)
    assert bare.returncode == 2 and "ROLLBACK_SERVICE is not set" in bare.stderr


def test_a_mistyped_stage_is_an_error_with_the_closest_name(fast_prod):
    typo = run(fast_prod, "list", "prd")
    assert typo.returncode == 1
    assert "`prd` has no builds: did you mean `prod`?" in typo.stderr
    assert run(fast_prod, "show", "prd", "previous").returncode == 1
    # CI's check of a new stage must not fail, but a likely typo is said, since it would check nothing
    ci = run(fast_prod, "check-freeze", "--stage", "prd")
    assert ci.returncode == 0 and "did you mean `prod`?" in ci.stderr


def test_control_characters_from_the_index_never_reach_the_terminal(fast_prod):
    hostile = "rolled back \x1b[2J\x1b]0;pwned\x07 by someone"

    def poison(index):
        index.freeze = Mark("ana", hostile, 1.0)
        art = index.artifacts[0]
        art.bad = Mark("ana\x1b[31m", hostile, 1.0)

    fast_prod.artifacts.update_index("prod", poison)
    build = fast_prod.artifacts.read_index("prod").artifacts[0].build_id
    shown = run(fast_prod, "show", "prod", build)
    assert shown.returncode == 0, shown.stderr
    assert "marked bad by ana" in shown.stdout and "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    lifted = run(fast_prod, "unfreeze", "prod", "--by", "ana")
    assert lifted.returncode == 0 and "prod: unfrozen (was: rolled back" in lifted.stdout
    assert "\x1b" not in lifted.stdout and "\x07" not in lifted.stdout


def test_a_terminal_cannot_act_as_a_slack_user(fast_prod, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[stages.prod]\napprovers = ["U0SRE"]\nrequesters = ["U0SRE"]\n')
    fast_prod.artifacts.update_index("prod", lambda i: setattr(i, "freeze", Mark("ana", "rolled back", 1.0)))
    posing = run(fast_prod, "unfreeze", "prod", "--by", "U0SRE", ROLLBACK_CONFIG=str(policy))
    assert posing.returncode == 1
    assert "`U0SRE` is a Slack user ID; a terminal cannot act as a Slack user" in posing.stderr
    assert fast_prod.artifacts.read_index("prod").freeze is not None  # nothing was lifted
    via_env = run(fast_prod, "rollback", "prod", "previous", "--yes", ROLLBACK_CONFIG=str(policy),
                  ROLLBACK_ACTOR="U0SRE")
    assert via_env.returncode == 1 and "cannot act as a Slack user" in via_env.stderr


def test_the_data_folder_is_the_bots_alone(fast_prod):
    done = run(fast_prod, "rollback", "prod", "previous", "--yes", "--by", "ana",
               ROLLBACK_DEPLOY_COMMAND=" ".join(fast_prod.settings.deploy_command))
    assert done.returncode == 0, done.stderr
    data = fast_prod.settings.data_dir
    assert data.stat().st_mode & 0o777 == 0o700
    loose = [str(p) for p in [data, *data.rglob("*")] if not p.is_symlink() and p.stat().st_mode & 0o077]
    assert loose == []


def test_help_speaks_to_the_operator():
    def helped(*args):
        return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=30).stdout

    top = helped("--help")
    assert "(arguments, Settings)" not in top and "``" not in top
    assert "docs/configuration.md" in top
    assert "rollback" in top and "check-freeze" in top
    listing = helped("list", "--help")
    assert "the stage whose builds to list" in listing and "--service" in listing


def test_prune_goes_through_the_service_and_is_in_the_audit_trail(fast_prod):
    dry = run(fast_prod, "prune", "--stage", "prod", "--keep", "1", "--dry-run", "--by", "ci-bot")
    assert dry.returncode == 0 and "would remove" in dry.stdout
    assert not [a for a in fast_prod.store.audit_trail("prod") if a.action == "prune"]  # a dry run changes nothing
    done = run(fast_prod, "prune", "--stage", "prod", "--keep", "1", "--by", "ci-bot")
    assert done.returncode == 0 and "removed" in done.stdout
    audited = [a for a in fast_prod.store.audit_trail("prod") if a.action == "prune"]
    assert len(audited) == 1 and audited[0].actor == "ci-bot"
    detail = audited[0].detail
    # v3 is the newest, v2 live and v1 the last known-good build: nothing may go, and the trail says so
    assert detail["keep"] == 1 and detail["removed"] == [] and "removed 0, kept 3" in done.stdout

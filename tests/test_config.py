import pytest

from bot.core.config import ConfigError, load_settings


def test_every_problem_is_reported_at_once(tmp_path):
    bad_toml = tmp_path / "policy.toml"
    bad_toml.write_text("[stages.prod\n")
    env = {
        "ROLLBACK_BUCKET": "Not_A_Bucket",
        "PORT": "eighty",
        "ROLLBACK_DEPLOY_COMMAND": "sls deploy --stage {stage} --region {region}",
        "ROLLBACK_CONFIG": str(bad_toml),
    }
    with pytest.raises(ConfigError) as err:
        load_settings(env, needs=["artifacts"])
    text = str(err.value)
    for expected in ("ROLLBACK_SERVICE is not set", "Not_A_Bucket", "PORT must be a whole number",
                     "{region}", "not valid TOML"):
        assert expected in text
    assert len(err.value.problems) == 5


def test_valid_settings_are_normalised():
    s = load_settings(
        {
            "ROLLBACK_BUCKET": "my-artifacts",
            "ROLLBACK_SERVICE": "orders",
            "ROLLBACK_PREFIX": "rollback",
            "SLACK_API_URL": "http://127.0.0.1:9000/api",
            "ROLLBACK_DEPLOY_COMMAND": "npx sls deploy --stage {stage} --package '{package}'",
            "PORT": "8080",
            "SLACK_BOT_TOKEN": "xoxb-secret",
        },
        needs=["artifacts"],
    )
    assert s.prefix == "rollback/"
    assert s.slack_api_url == "http://127.0.0.1:9000/api/"
    assert s.deploy_command == ("npx", "sls", "deploy", "--stage", "{stage}", "--package", "{package}")
    assert s.port == 8080
    assert "xoxb-secret" not in repr(s)
    assert s.secrets() == ["xoxb-secret"]


def test_slack_mode_needs_a_signing_secret_unless_socket_mode():
    base = {"ROLLBACK_BUCKET": "my-artifacts", "ROLLBACK_SERVICE": "orders", "SLACK_BOT_TOKEN": "xoxb-1"}
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        load_settings(base, needs=["artifacts", "slack"])
    load_settings({**base, "SLACK_APP_TOKEN": "xapp-1"}, needs=["artifacts", "slack"])


def test_a_policy_with_mistakes_stops_start_up(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[stages.prod]\napprovers = "U1"\napprover = ["U2"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings({"ROLLBACK_CONFIG": str(policy)})
    assert "policy.toml:2: [stages.prod] approvers must be a list of Slack IDs" in str(err.value)
    assert "policy.toml:3: unknown key `approver` in [stages.prod]" in str(err.value)

"""The Slack face of rollback-bot: the only package that imports slack_bolt."""

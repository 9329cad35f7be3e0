"""Local stand-ins for Slack and AWS, shared by the tests and `rollback-bot demo`.

Nothing here is used when the bot runs against the real Slack and AWS.
"""

"""rollback-bot: roll a Serverless Framework service back to an earlier build, the right way."""

__version__ = "0.1.0"

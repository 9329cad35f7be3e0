"""Adapters to the outside: S3, git, AWS (CloudFormation, Lambda), sqlite, archives, the plugin cache."""

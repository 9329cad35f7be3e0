"""CloudWatch alarms of a service's stage: the ones in its own stack (AWS::CloudWatch::Alarm, as
serverless-plugin-aws-alerts creates them) and the ones the catalog names, read in the stage's
account and region with its credentials."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from botocore.config import Config
from botocore.exceptions import ClientError

from bot.adapters import aws_clients
from bot.core.catalog import Catalog

CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=20)


@dataclass(frozen=True)
class AlarmState:
    name: str
    state: str  # OK | ALARM | INSUFFICIENT_DATA
    reason: str
    updated: float  # when it entered that state


class AlarmReader:
    def __init__(self, catalog: Catalog, env_for: Callable[[str], Mapping[str, str]]):
        self.catalog = catalog
        self.env_for = env_for  # stage -> the AWS variables of its account (an assumed role's, or the bot's)

    def read(self, stage: str, service: str, stack_name: str) -> list[AlarmState]:
        """Every watched alarm's state; raises botocore errors (the watch backs off and says so once)."""
        env = self.env_for(stage)
        region = self.catalog.account(stage).region
        cfn = aws_clients.client("cloudformation", region, CONFIG, env)
        cw = aws_clients.client("cloudwatch", region, CONFIG, env)
        names, prefix = self.catalog.alarm_spec(stage, service)
        names = set(names)
        try:
            for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name):
                names |= {r["PhysicalResourceId"] for r in page["StackResourceSummaries"]
                          if r["ResourceType"] == "AWS::CloudWatch::Alarm" and r.get("PhysicalResourceId")}
        except ClientError as exc:
            if "does not exist" not in str(exc):
                raise
        found: dict[str, AlarmState] = {}
        pages = []
        sorted_names = sorted(names)
        for i in range(0, len(sorted_names), 100):  # describe_alarms takes 100 names at a time
            pages += list(cw.get_paginator("describe_alarms").paginate(AlarmNames=sorted_names[i:i + 100]))
        if prefix:
            pages += list(cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix))
        for page in pages:
            for a in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
                found[a["AlarmName"]] = AlarmState(a["AlarmName"], a["StateValue"], a.get("StateReason", "")[:500],
                                                   a["StateUpdatedTimestamp"].timestamp())
        return sorted(found.values(), key=lambda a: a.name)

"""moto's server (embedded AWS) on a free loopback port, patched in five places to behave as AWS does.

moto checks If-Match / If-None-Match and then writes, without a lock, so two racing writers can
both pass the check; real S3 never lets that happen. Serialising PutObject restores S3's
semantics, and our own code still has to send the conditions for concurrent publishes to land.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import urllib.request

from moto.apigateway.models import APIGatewayBackend
from moto.cloudformation.exceptions import ValidationError as CloudFormationValidationError
from moto.cloudformation.models import CloudFormationBackend
from moto.cloudformation.parsing import get_model_map, get_name_type_map
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.common_models import CloudFormationModel
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

_put_lock = threading.Lock()


def _make_put_atomic() -> None:
    if getattr(S3Response.put_object, "_atomic", False):
        return
    original = S3Response.put_object

    @functools.wraps(original)
    def put_object(self, *args, **kwargs):
        with _put_lock:
            return original(self, *args, **kwargs)

    put_object._atomic = True
    S3Response.put_object = put_object


def _tolerate_missing_change_set() -> None:
    """moto 5.2.5 raises UnboundLocalError deleting a change set that does not exist; Serverless
    deletes one before every update, and real CloudFormation answers that call without error."""
    if getattr(CloudFormationBackend.delete_change_set, "_tolerant", False):
        return
    original = CloudFormationBackend.delete_change_set

    @functools.wraps(original)
    def delete_change_set(self, change_set_name: str) -> None:
        with contextlib.suppress(UnboundLocalError):
            original(self, change_set_name)

    delete_change_set._tolerant = True
    CloudFormationBackend.delete_change_set = delete_change_set


def _skip_unmodelled_resources() -> None:
    """moto 5.2.5 keeps None in a stack's resources for each type it has no model of (a Serverless stack
    always has one: its deployment bucket's AWS::S3::BucketPolicy), and DescribeStackResource then
    answers 500 for every logical id. serverless-domain-manager finds its API with that call after each
    deploy; real CloudFormation answers it. Looking past the placeholders answers it as AWS does."""
    if getattr(CloudFormationBackend.describe_stack_resource, "_tolerant", False):
        return

    def describe_stack_resource(self, stack_name: str, logical_resource_id: str):
        stack = self.get_stack(stack_name)
        for resource in stack.stack_resources:
            if resource is not None and getattr(resource, "logical_resource_id", None) == logical_resource_id:
                return stack, resource
        raise CloudFormationValidationError(stack_name, f"Resource {logical_resource_id} does not exist for "
                                                        f"stack {stack_name}")

    describe_stack_resource._tolerant = True
    CloudFormationBackend.describe_stack_resource = describe_stack_resource


def _list_no_mappings_as_empty() -> None:
    """moto 5.2.5 answers GetBasePathMappings with 500 (a KeyError) for a domain that has no mapping yet;
    real API Gateway answers an empty list. serverless-domain-manager asks on every deploy before it
    creates the service's mapping, so without this the first deploy to a new domain fails."""
    if getattr(APIGatewayBackend.get_base_path_mappings, "_tolerant", False):
        return
    original = APIGatewayBackend.get_base_path_mappings

    @functools.wraps(original)
    def get_base_path_mappings(self, domain_name: str):
        if domain_name in self.domain_names and domain_name not in self.base_path_mappings:
            return []
        return original(self, domain_name)

    get_base_path_mappings._tolerant = True
    APIGatewayBackend.get_base_path_mappings = get_base_path_mappings


class _StackAlarm(CloudFormationModel):
    """AWS::CloudWatch::Alarm in a stack, as CloudFormation makes it (serverless-plugin-aws-alerts'
    alarms). moto 5.2.5 has no model for it and leaves an empty placeholder; this one makes the alarm
    in moto's CloudWatch, so a stack's own alarms can be found and watched."""

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudWatch::Alarm"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "AlarmName"

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        p = cloudformation_json["Properties"]
        name = p.get("AlarmName") or resource_name
        cloudwatch_backends[account_id][region_name].put_metric_alarm(
            name=name, namespace=p.get("Namespace"), metric_name=p.get("MetricName"),
            comparison_operator=p["ComparisonOperator"], evaluation_periods=int(p["EvaluationPeriods"]),
            period=int(p.get("Period", 60)), threshold=float(p["Threshold"]), statistic=p.get("Statistic"),
            description=p.get("AlarmDescription", ""), dimensions=p.get("Dimensions", []),
            alarm_actions=p.get("AlarmActions", []))
        return cls(name)

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, account_id,
                                        region_name):
        cls.delete_from_cloudformation_json(original_resource.name, cloudformation_json, account_id, region_name)
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        cloudwatch_backends[account_id][region_name].delete_alarms([resource_name])


def _model_stack_alarms() -> None:
    get_model_map.cache_clear()  # the map is built from CloudFormationModel's subclasses, _StackAlarm now one
    get_name_type_map.cache_clear()


class MotoServer:
    def __init__(self) -> None:
        _make_put_atomic()
        _tolerate_missing_change_set()
        _skip_unmodelled_resources()
        _list_no_mappings_as_empty()
        _model_stack_alarms()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns test output
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://127.0.0.1:{port}"  # not localhost: see DESIGN.md

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        self._server.stop()

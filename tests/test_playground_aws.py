"""bot/playground/aws.py: where moto's server is patched to answer as AWS does, each patch checked with
the call that needs it, as a Serverless plugin makes it (boto3 here, over HTTP to moto's server)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

TEMPLATE = {
    "Resources": {
        "ServerlessDeploymentBucket": {"Type": "AWS::S3::Bucket"},
        "ServerlessDeploymentBucketPolicy": {  # a type moto has no model of: every Serverless stack has one
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {"Bucket": {"Ref": "ServerlessDeploymentBucket"}, "PolicyDocument": {
                "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"}]}}},
        "ApiGatewayRestApi": {"Type": "AWS::ApiGateway::RestApi", "Properties": {"Name": "prod-shop-web"}},
    }
}


def test_describe_stack_resource_finds_a_resource_of_a_stack_with_an_unmodelled_type(aws_env):
    cfn = boto3.client("cloudformation")
    cfn.create_stack(StackName="shop-web-prod", TemplateBody=json.dumps(TEMPLATE))
    found = cfn.describe_stack_resource(StackName="shop-web-prod", LogicalResourceId="ApiGatewayRestApi")
    api = found["StackResourceDetail"]["PhysicalResourceId"]
    assert api in {a["id"] for a in boto3.client("apigateway").get_rest_apis()["items"]}
    with pytest.raises(ClientError) as missing:  # and a missing one is the error AWS gives, not a 500
        cfn.describe_stack_resource(StackName="shop-web-prod", LogicalResourceId="Nope")
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    assert "Resource Nope does not exist for stack shop-web-prod" in str(missing.value)


def test_a_domain_with_no_base_path_mapping_yet_lists_none(aws_env):
    apigw = boto3.client("apigateway")
    apigw.create_domain_name(domainName="api.example.com", regionalCertificateArn="arn:aws:acm:us-east-1:1:c/x",
                             endpointConfiguration={"types": ["REGIONAL"]})
    assert apigw.get_base_path_mappings(domainName="api.example.com").get("items", []) == []
    with pytest.raises(ClientError) as unknown:  # an unknown domain is still NotFound
        apigw.get_base_path_mappings(domainName="nope.example.com")
    assert unknown.value.response["Error"]["Code"] == "NotFoundException"

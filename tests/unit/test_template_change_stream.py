"""The change stream in the template: both mirror tables' streams feed the publisher with partial batch
responses and a failure destination, it may put events on its bus only, and it is watched."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from local.template import parse
from tests.security.iam_policies import expanded_template

ROOT = Path(__file__).resolve().parents[2]


@cache
def template() -> dict[str, Any]:
    return parse(ROOT)


@cache
def translated() -> dict[str, Any]:
    """The template as SAM translates it for CloudFormation (code locations stubbed)."""
    return expanded_template(ROOT)


def publisher() -> dict[str, Any]:
    props: dict[str, Any] = template()["Resources"]["PublisherFunction"]["Properties"]
    return props


@pytest.mark.parametrize("table", ["CalendarsTable", "EventsTable"])
def test_each_mirror_table_streams_both_images_to_the_publisher(table: str) -> None:
    # GIVEN the mirror table and the publisher's event sources
    spec = template()["Resources"][table]["Properties"]["StreamSpecification"]
    (source,) = [
        e["Properties"]
        for e in publisher()["Events"].values()
        if e["Type"] == "DynamoDB" and e["Properties"]["Stream"] == {"Fn::GetAtt": [table, "StreamArn"]}
    ]
    # THEN the stream carries old and new images, read from the oldest record with partial batch responses,
    # bisecting on errors, and a batch out of retries is reported to the failure queue
    assert spec == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert source == {
        "Stream": {"Fn::GetAtt": [table, "StreamArn"]},
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": 100,
        "MaximumBatchingWindowInSeconds": 1,
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 10,
        "MaximumRecordAgeInSeconds": 86400,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailureQueue", "Arn"]}}},
    }


def test_the_publisher_publishes_to_the_change_bus_and_nowhere_else() -> None:
    assert template()["Resources"]["ChangeBus"]["Type"] == "AWS::Events::EventBus"
    assert publisher()["Environment"]["Variables"] == {"CHANGE_BUS_NAME": {"Ref": "ChangeBus"}}
    assert publisher()["Policies"] == [{"EventBridgePutEventsPolicy": {"EventBusName": {"Ref": "ChangeBus"}}}]
    # AND its translated role can read the streams, put events on that bus, and send to the failure queue
    role = translated()["Resources"]["PublisherFunctionRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    actions = {s["Action"] if isinstance(s["Action"], str) else tuple(s["Action"]) for s in statements}
    assert actions == {"events:PutEvents", "sqs:SendMessage"}
    (send,) = [s for s in statements if s["Action"] == "sqs:SendMessage"]
    assert send["Resource"] == {"Fn::GetAtt": ["FailureQueue", "Arn"]}
    assert any(arn.endswith("/AWSLambdaDynamoDBExecutionRole") for arn in role["ManagedPolicyArns"])


def test_the_publisher_has_a_log_group_and_alarms_on_errors_throttles_and_iterator_age() -> None:
    resources = template()["Resources"]
    assert resources["PublisherLogGroup"]["Properties"]["LogGroupName"] == {
        "Fn::Sub": "/aws/lambda/${PublisherFunction}"
    }
    alarms = {
        res["Properties"]["MetricName"]: res["Properties"]
        for res in resources.values()
        if res["Type"] == "AWS::CloudWatch::Alarm"
        # !Ref, or !Sub "${...}" as the alarm loops write it: the function's name either way
        and res["Properties"]["Dimensions"][0]["Value"]
        in ({"Ref": "PublisherFunction"}, {"Fn::Sub": "${PublisherFunction}"})
    }
    assert set(alarms) == {"Errors", "Throttles", "IteratorAge"}
    age = alarms["IteratorAge"]
    assert (age["Statistic"], age["Threshold"], age["ComparisonOperator"]) == (
        "Maximum",
        300_000,
        "GreaterThanThreshold",
    )


def test_the_bus_is_an_output() -> None:
    outputs = template()["Outputs"]
    assert outputs["ChangeBusName"]["Value"] == {"Ref": "ChangeBus"}
    assert outputs["ChangeBusArn"]["Value"] == {"Fn::GetAtt": ["ChangeBus", "Arn"]}

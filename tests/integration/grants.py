"""Least privilege, checked: the DynamoDB calls a piece of code makes against what the template grants
the function that runs it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from local.stack import ROOT
from local.template import parse

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient


@contextmanager
def dynamodb_calls(client: DynamoDBClient) -> Iterator[set[tuple[str, str]]]:
    """Every (operation, table or ``table/index/name``) the client is asked for inside the block."""
    calls: set[tuple[str, str]] = set()

    def record(params: dict[str, Any], model: Any, **_kwargs: Any) -> None:
        index = params.get("IndexName")
        calls.add((f"dynamodb:{model.name}", str(params.get("TableName", "")) + (f"/index/{index}" if index else "")))

    events = client.meta.events
    events.register("before-parameter-build.dynamodb", record)
    try:
        yield calls
    finally:
        events.unregister("before-parameter-build.dynamodb", record)


def function_grants(function: str, tables: Mapping[str, str]) -> set[tuple[str, str]]:
    """The DynamoDB (action, table or ``table/index/name``) pairs the template's inline policies give ``function``,
    with the test's table names; every resource must be one table's or one index's ARN, nothing wider."""
    template = parse(ROOT)
    granted: set[tuple[str, str]] = set()
    for policy in template["Resources"][function]["Properties"]["Policies"]:
        for statement in policy.get("Statement", []):
            if not statement["Action"][0].startswith("dynamodb:"):
                continue  # e.g. the status function's sync invoke: not a DynamoDB call
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for resource in resources:
                if "Fn::Sub" in resource:  # ${Table.Arn}/index/<name>
                    table, _, index = resource["Fn::Sub"].removeprefix("${").partition(".Arn}")
                    assert index.startswith("/index/")
                    assert "*" not in index
                    granted |= {(action, tables[table] + index) for action in statement["Action"]}
                    continue
                assert resource["Fn::GetAtt"][1] == "Arn"
                granted |= {(action, tables[resource["Fn::GetAtt"][0]]) for action in statement["Action"]}
    return granted

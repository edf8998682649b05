"""The template's operator surface: IAM-only status routes, alarms for every function, a dashboard
whose business metrics are ones the code emits, least privilege for the status function."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from local.template import parse
from tests.security.iam_policies import expanded_template

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = (
    "CallbackFunction",
    "SyncFunction",
    "ResyncFunction",
    "OAuthFunction",
    "StatusFunction",
    "PublisherFunction",
    "AgendaFunction",
)

STATUS_TABLES = ("UsersTable", "CalendarsTable", "EventListingsTable")  # the tables the status function touches


@cache
def template() -> dict[str, Any]:
    return parse(ROOT)


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {lid: res for lid, res in template()["Resources"].items() if res["Type"] == kind}


def test_only_the_status_and_read_routes_require_iam_and_all_of_them_do() -> None:
    # GIVEN the template as SAM translates it for CloudFormation (code locations stubbed)
    translated = expanded_template(ROOT)
    paths = translated["Resources"]["HttpApi"]["Properties"]["Body"]["paths"]
    # WHEN each route's security is read THEN /status… and /v1… are SigV4 (IAM); Feishu's and the user's are open
    security = {
        f"{method.upper()} {path}": op.get("security") for path, ops in paths.items() for method, op in ops.items()
    }
    assert security == {
        "POST /feishu/events": None,
        "GET /oauth/start": None,
        "GET /oauth/callback": None,
        "GET /status": [{"AWS_IAM": []}],
        "GET /status/{open_id}": [{"AWS_IAM": []}],
        "POST /status/{open_id}/resync": [{"AWS_IAM": []}],
        "GET /v1/users/{open_id}/calendars": [{"AWS_IAM": []}],
        "GET /v1/users/{open_id}/agenda": [{"AWS_IAM": []}],
        "GET /v1/freebusy": [{"AWS_IAM": []}],
    }


def test_the_status_function_has_least_privilege_a_failure_destination_and_a_log_group() -> None:
    # GIVEN the status function's policies
    props = template()["Resources"]["StatusFunction"]["Properties"]
    (inline,) = props["Policies"]
    # THEN DynamoDB is granted action by action, on the tables' ARNs and the agenda index only (no
    # wildcard): reading and pinging users, querying one user's calendars, event listings and coming
    # week; and invoking the sync
    granted = {
        (action, json.dumps(resource))
        for statement in inline["Statement"]
        for action in statement["Action"]
        for resource in (statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]])
    }
    assert all(statement["Effect"] == "Allow" for statement in inline["Statement"])
    users, calendars, listings = (json.dumps({"Fn::GetAtt": [t, "Arn"]}) for t in STATUS_TABLES)
    assert granted == {
        ("dynamodb:GetItem", users),
        ("dynamodb:Scan", users),
        ("dynamodb:UpdateItem", users),
        ("dynamodb:Query", calendars),
        ("dynamodb:Query", listings),
        ("lambda:InvokeFunction", json.dumps({"Fn::GetAtt": ["SyncFunction", "Arn"]})),
        ("dynamodb:Query", json.dumps({"Fn::Sub": "${EventsTable.Arn}/index/agenda-index"})),
    }
    assert props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailureQueue", "Arn"]
    }
    groups = {json.dumps(res["Properties"].get("LogGroupName")) for res in resources("AWS::Logs::LogGroup").values()}
    assert json.dumps({"Fn::Sub": "/aws/lambda/${StatusFunction}"}) in groups


def test_the_agenda_function_only_reads_a_user_its_calendars_and_the_agenda_index() -> None:
    # GIVEN the agenda function's policies
    props = template()["Resources"]["AgendaFunction"]["Properties"]
    (inline,) = props["Policies"]
    granted = {
        (action, json.dumps(statement["Resource"]))
        for statement in inline["Statement"]
        for action in statement["Action"]
    }
    # THEN it may read one user item, query calendars and the events' agenda index — nothing else, no write
    assert all(statement["Effect"] == "Allow" for statement in inline["Statement"])
    assert granted == {
        ("dynamodb:GetItem", json.dumps({"Fn::GetAtt": ["UsersTable", "Arn"]})),
        ("dynamodb:Query", json.dumps({"Fn::GetAtt": ["CalendarsTable", "Arn"]})),
        ("dynamodb:Query", json.dumps({"Fn::Sub": "${EventsTable.Arn}/index/agenda-index"})),
    }
    groups = {json.dumps(res["Properties"].get("LogGroupName")) for res in resources("AWS::Logs::LogGroup").values()}
    assert json.dumps({"Fn::Sub": "/aws/lambda/${AgendaFunction}"}) in groups


def test_the_agenda_index_keeps_the_events_key_and_projects_what_the_reader_asks_for() -> None:
    from feishu_mirror.dynamodb.agenda_reader import AGENDA_PROJECTION  # noqa: PLC0415

    props = template()["Resources"]["EventsTable"]["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "calendar_key", "KeyType": "HASH"},
        {"AttributeName": "event_id", "KeyType": "RANGE"},
    ]
    (index,) = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "agenda-index"
    projected = {"calendar_key", "event_id", "agenda_key", "agenda_at", *index["Projection"]["NonKeyAttributes"]}
    assert set(AGENDA_PROJECTION) <= projected


def _alarms() -> list[dict[str, Any]]:
    return [res["Properties"] for res in resources("AWS::CloudWatch::Alarm").values()]


def _function_named(value: dict[str, Any]) -> str:
    """The function whose name a dimension's value is: ``!Ref Fn`` or ``!Sub "${Fn}"`` (what the alarm loops write)."""
    if "Ref" in value:
        return str(value["Ref"])
    found = re.fullmatch(r"\$\{(\w+)\}", value["Fn::Sub"])
    assert found, value
    return found.group(1)


def test_every_function_has_an_errors_and_a_throttles_alarm() -> None:
    covered = {
        (alarm["MetricName"], _function_named(alarm["Dimensions"][0]["Value"]))
        for alarm in _alarms()
        if alarm["Namespace"] == "AWS/Lambda" and alarm["MetricName"] in ("Errors", "Throttles")
    }
    assert covered == {(metric, fn) for fn in FUNCTIONS for metric in ("Errors", "Throttles")}


def test_each_function_alarms_at_its_first_error_and_throttle_but_the_sync_after_15_minutes_of_throttles() -> None:
    # GIVEN the template's Lambda Errors and Throttles alarms (the loops expanded)
    lambda_alarms = {
        (alarm["MetricName"], _function_named(alarm["Dimensions"][0]["Value"])): alarm
        for alarm in _alarms()
        if alarm["Namespace"] == "AWS/Lambda" and alarm["MetricName"] in ("Errors", "Throttles")
    }
    # THEN each fires on the first error or throttle in a 5-minute period ...
    for (metric, function), alarm in lambda_alarms.items():
        periods = 3 if (metric, function) == ("Throttles", "SyncFunction") else 1
        assert (alarm["Statistic"], alarm["Period"], alarm["Threshold"]) == ("Sum", 300, 0), (metric, function)
        assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (periods, periods), (metric, function)
        assert (alarm["ComparisonOperator"], alarm["TreatMissingData"]) == ("GreaterThanThreshold", "notBreaching")
    # ... except the sync function's throttles, which its reserved concurrency makes on purpose (3 periods)
    assert lambda_alarms["Throttles", "SyncFunction"]["EvaluationPeriods"] == 3


def test_the_failure_queue_and_reauthorisations_alarm_at_the_first_occurrence() -> None:
    by_metric = {alarm["MetricName"]: alarm for alarm in _alarms() if alarm["Namespace"] != "AWS/Lambda"}
    queue = by_metric["ApproximateNumberOfMessagesVisible"]
    assert queue["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailureQueue", "QueueName"]}}]
    reauth = by_metric["UsersAwaitingReauth"]  # a gauge: the alarm stays on while anyone is waiting
    assert reauth["Statistic"] == "Maximum"
    service = template()["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    namespace = template()["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    assert (reauth["Namespace"], reauth["Dimensions"]) == (namespace, [{"Name": "service", "Value": service}])
    for alarm in (queue, reauth):
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_alarm_actions_go_to_the_optional_topic_only() -> None:
    assert template()["Parameters"]["AlarmTopicArn"]["Default"] == ""
    expected = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for alarm in _alarms():
        assert alarm["AlarmActions"] == expected
        assert alarm["OKActions"] == expected


def _emitted_metric_names() -> set[str]:
    source = "".join(p.read_text() for p in [*(ROOT / "layers/shared/feishu_mirror").rglob("*.py")])
    source += "".join(p.read_text() for p in (ROOT / "functions").glob("*/app.py"))
    names = {name for call in re.findall(r"\bcount\((.*)", source) for name in re.findall(r'"([A-Z]\w+)"', call)}
    names |= set(re.findall(r'^LAG_METRIC = "(\w+)"', source, re.MULTILINE))
    # the listings' and the subscriptions' metric names
    for block in re.findall(r"= (?:MetricNames|SubscriptionMetrics)\((.*?)\n\)", source, re.DOTALL):
        names |= set(re.findall(r'="([A-Z]\w+)"', block))
    return names


def test_the_dashboard_is_valid_json_and_shows_only_metrics_the_code_emits() -> None:
    # GIVEN the dashboard body with its ${...} substitutions filled in
    (dashboard,) = resources("AWS::CloudWatch::Dashboard").values()
    body = re.sub(r"\$\{[\w:.]+\}", "x", dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    widgets = json.loads(body)["widgets"]
    # WHEN its business metrics are collected
    shown = {m[1] for w in widgets for m in w["properties"].get("metrics", []) if m[0] == "FeishuCalendarMirror"}
    # THEN each of them is emitted somewhere, and the main ones are all there
    assert shown <= _emitted_metric_names()
    assert {
        "EventsReceived",
        "DuplicatesDropped",
        "SyncsFull",
        "SyncsIncremental",
        "SyncsResumed",
        "PagesFetched",
        "CalendarsUpserted",
        "CalendarsDeleted",
        "SyncTokenResets",
        "FeishuRateLimitWaits",
        "TokenRefreshes",
        "UsersNeedingReauth",
        "UsersAwaitingReauth",
        "EventToMirrorLag",
        "TokenRefreshFailures",
        "SubscriptionFailures",
    } <= shown
    # AND so are the events' (日程) own: every listing metric of the events engine, and their subscriptions
    assert {
        "EventListingsFull",
        "EventListingsIncremental",
        "EventListingsResumed",
        "EventPagesFetched",
        "EventsUpserted",
        "EventsDeleted",
        "EventSyncTokenResets",
        "EventMassDeletionsHeld",
        "EventSubscriptionFailures",
        "EventListingsUnavailable",
        "EventListingFailures",
    } <= shown


def test_the_dashboards_alarm_widget_lists_every_alarm_of_the_template() -> None:
    # GIVEN the dashboard's alarm widget
    (dashboard,) = resources("AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    listed = re.findall(r'"\$\{(\w+)\.Arn\}"', body)
    # THEN it names each alarm the template defines, once
    assert sorted(listed) == sorted(resources("AWS::CloudWatch::Alarm"))


def test_the_status_url_is_an_output() -> None:
    assert template()["Outputs"]["StatusUrl"]["Value"]["Fn::Sub"].endswith("/status")


def test_each_unauthenticated_route_has_throttling_sized_for_it_and_every_setting_names_a_route() -> None:
    # GIVEN the HTTP API as SAM translates it: its routes (from the functions' events, in the API's
    # OpenAPI body, so they exist before the stage) and the stage's throttling
    translated = expanded_template(ROOT)["Resources"]
    paths = translated["HttpApi"]["Properties"]["Body"]["paths"]
    routes = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    (stage,) = (res["Properties"] for res in translated.values() if res["Type"] == "AWS::ApiGatewayV2::Stage")
    settings = stage["RouteSettings"]
    # THEN every route setting names a route (an unknown key fails the deployment) ...
    assert set(settings) <= routes
    limits = {key: (v["ThrottlingRateLimit"], v["ThrottlingBurstLimit"]) for key, v in settings.items()}
    # ... Feishu's pushes keep room, and the OAuth routes, which anyone can call, are held to what
    # people signing in need; everything else (the IAM-signed operator routes) gets the default
    assert limits == {"POST /feishu/events": (100, 200), "GET /oauth/start": (2, 10), "GET /oauth/callback": (2, 10)}
    default = stage["DefaultRouteSettings"]
    assert (default["ThrottlingRateLimit"], default["ThrottlingBurstLimit"]) == (10, 20)

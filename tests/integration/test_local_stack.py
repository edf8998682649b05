"""The no-Docker local stack itself, on a toy template (tests/fixtures/local_stack/): what API Gateway,
Lambda (runtime, Invoke API, async retries, failure destination), DynamoDB and the schedule would do."""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import requests

from local.api_gateway import ApiGateway
from local.stack import ROOT, LocalStack
from local.template import load

pytestmark = pytest.mark.integration

TOY = Path(__file__).resolve().parent.parent / "fixtures" / "local_stack"
STATE = ROOT / ".local" / "test-local-stack"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """The toy app, started from its template alone."""
    with LocalStack({}, root=TOY, state=STATE, prefix="toy-") as running:
        yield running


def request(
    stack: LocalStack, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """A raw HTTP request to the front (http.client, so duplicate headers can be sent)."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path)
        for name, value in headers or []:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def echoed(stack: LocalStack, method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, Any]:
    """The 2.0 event the echo function received."""
    status, _, content = request(stack, method, path, body, list(headers.items()))
    assert status == 200, content
    event: dict[str, Any] = json.loads(content)["event"]
    return event


def work_item(stack: LocalStack, item_id: str) -> dict[str, Any]:
    """The worker's record for an event id (attempt count and detail type)."""
    item = stack.client().get_item(
        TableName=stack.template.table_names["ItemsTable"], Key={"pk": {"S": f"work#{item_id}"}}, ConsistentRead=True
    )
    found: dict[str, Any] = item.get("Item", {})
    return found


# ------------------------------------------------------------------------------- template reading


def test_the_real_template_parses() -> None:
    # GIVEN the project's template.yaml
    # WHEN the local stack reads it
    template = load(ROOT, prefix="fcm-")
    # THEN it finds the app's functions, routes, tables, layer and schedule, with env resolved locally
    assert {"CallbackFunction", "SyncFunction", "ResyncFunction", "OAuthFunction"} <= set(template.functions)
    routes = {(r.method, r.path): r.function for r in template.routes}
    assert routes[("POST", "/feishu/events")] == "CallbackFunction"
    assert routes[("GET", "/oauth/start")] == "OAuthFunction"
    assert routes[("GET", "/oauth/callback")] == "OAuthFunction"
    assert len(template.tables) == 7
    assert [(s.function, s.seconds) for s in template.schedules] == [("ResyncFunction", 60)]
    callback, sync = template.functions["CallbackFunction"], template.functions["SyncFunction"]
    assert callback.environment["SYNC_FUNCTION_NAME"] == "fcm-SyncFunction"
    assert callback.environment["USERS_TABLE"] == "fcm-UsersTable"  # from Globals
    assert callback.environment["FEISHU_BASE_URL"] == "https://open.feishu.cn"  # parameter default
    assert callback.layers == ("SharedLayer",)
    assert callback.max_retry_attempts == 0  # from the separate AWS::Lambda::EventInvokeConfig
    assert (sync.timeout, sync.reserved_concurrency, sync.max_retry_attempts) == (300, 20, 2)


def test_the_toy_template_resolves_globals_parameters_and_conditions() -> None:
    # GIVEN the toy template and a parameter override
    # WHEN it is read
    template = load(TOY, prefix="t-", parameters={"Greeting": "hi"})
    echo, worker = template.functions["EchoFunction"], template.functions["WorkerFunction"]
    # THEN Globals and the function's own variables are merged, intrinsics resolved, NoValue dropped
    assert echo.environment == {
        "ITEMS_TABLE": "t-ItemsTable",
        "GREETING": "hi from us-east-1",
        "WORKER_FUNCTION_NAME": "t-WorkerFunction",
    }
    assert (echo.timeout, echo.memory, echo.max_retry_attempts) == (5, 256, 2)
    assert (worker.reserved_concurrency, worker.max_retry_attempts) == (1, 1)
    assert (echo.layers, worker.layers) == (("ToyLayer",), ("ToyLayer", "ExtraLayer"))  # Globals first
    assert [(s.function, s.seconds) for s in template.schedules] == [("WorkerFunction", 60)]


# ----------------------------------------------------------------------------------- HTTP front


def test_a_request_becomes_an_api_gateway_2_0_event(stack: LocalStack) -> None:
    # GIVEN a request with repeated headers, cookies, a repeated query parameter and a JSON body
    body = json.dumps({"hello": "世界"}).encode()
    headers = [
        ("X-Custom", "one"),
        ("X-Custom", "two"),
        ("Cookie", "a=1; b=2"),
        ("Content-Type", "application/json"),
        ("User-Agent", "toy-test"),
    ]
    # WHEN it is sent to the echo route
    status, _, content = request(stack, "POST", "/echo?b=2&a=1&a=3", body, headers)
    assert status == 200, content
    answer = json.loads(content)
    event = answer["event"]
    # THEN the function got the event API Gateway would build
    port = stack.api_url.rsplit(":", 1)[1]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /echo"
    assert (event["rawPath"], event["rawQueryString"]) == ("/echo", "b=2&a=1&a=3")
    assert event["queryStringParameters"] == {"a": "1,3", "b": "2"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert all(name == name.lower() for name in event["headers"])
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-custom"] == "one,two"
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["headers"]["x-forwarded-port"] == port
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert (event["body"], event["isBase64Encoded"]) == ('{"hello": "\\u4e16\\u754c"}', False)
    assert "pathParameters" not in event
    context = event["requestContext"]
    assert context["http"] == {
        "method": "POST",
        "path": "/echo",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "toy-test",
    }
    assert (context["routeKey"], context["stage"]) == ("POST /echo", "$default")
    assert all(context[key] for key in ("requestId", "accountId", "apiId", "domainName", "domainPrefix"))
    assert re.fullmatch(r"\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000", context["time"])
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 60
    # AND it ran as the template's function, with its layer (and the layer's dependency) importable
    # but not the layer only the worker declares
    assert answer["function"] == "toy-EchoFunction"
    assert answer["greeting"].startswith("hello from us-east-1")
    assert answer["has_extra_layer"] is False


@pytest.mark.parametrize(
    ("content_type", "body", "base64_encoded"),
    [
        ("application/octet-stream", b"\x00\xff\x10binary", True),
        ("text/plain; charset=utf-8", "héllo".encode(), False),
        ("application/x-www-form-urlencoded", b"a=1&b=2", True),  # as API Gateway does
        (None, b"no content type", True),
    ],
)
def test_bodies_are_base64_encoded_unless_textual(
    stack: LocalStack, content_type: str | None, body: bytes, base64_encoded: bool
) -> None:
    # GIVEN a body of some content type
    headers = {"Content-Type": content_type} if content_type else {}
    # WHEN it is posted to a route
    event = echoed(stack, "POST", "/echo", body, **headers)
    # THEN binary (and form) bodies arrive base64-encoded, text as a string
    assert event["isBase64Encoded"] is base64_encoded
    received = base64.b64decode(event["body"]) if base64_encoded else event["body"].encode()
    assert received == body


def test_path_parameters_and_unknown_routes(stack: LocalStack) -> None:
    # GIVEN a route with a path parameter
    # WHEN it is requested without a body or query
    event = echoed(stack, "GET", "/items/abc-1")
    # THEN the route key is the template's and the parameter is extracted; absent parts are absent
    assert event["routeKey"] == "GET /items/{item_id}"
    assert event["pathParameters"] == {"item_id": "abc-1"}
    assert "body" not in event
    assert "queryStringParameters" not in event
    assert "cookies" not in event
    # AND a path or method no route declares gets API Gateway's 404
    for method, path in (("GET", "/nowhere"), ("POST", "/items/abc-1")):
        status, _, content = request(stack, method, path)
        assert (status, json.loads(content)) == (404, {"message": "Not Found"})


def test_function_results_are_mapped_by_the_2_0_rules(stack: LocalStack) -> None:
    # GIVEN the echo function returns a full response (status, headers, cookies, base64 body)
    respond = {
        "statusCode": 201,
        "headers": {"x-answer": "42", "content-type": "image/png"},
        "cookies": ["s=1; Path=/", "t=2"],
        "body": base64.b64encode(b"\x89PNG\x00").decode(),
        "isBase64Encoded": True,
    }
    # WHEN it is called through the front
    reply = requests.post(f"{stack.api_url}/echo", json={"respond": respond}, timeout=30)
    # THEN the HTTP response is that status, those headers, one Set-Cookie per cookie, the decoded body
    assert reply.status_code == 201
    assert reply.headers["x-answer"] == "42"
    assert reply.raw.headers.getlist("Set-Cookie") == ["s=1; Path=/", "t=2"]
    assert reply.content == b"\x89PNG\x00"
    # AND a result without statusCode is a 200 JSON response of that result
    plain = requests.post(f"{stack.api_url}/echo", json={"respond": {"just": "data"}}, timeout=30)
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == {"just": "data"}


def test_oversized_requests_are_refused(stack: LocalStack) -> None:
    # GIVEN a body over API Gateway's 10 MB limit
    # WHEN it is posted
    reply = requests.post(f"{stack.api_url}/echo", data=b"x" * (10 * 1024 * 1024 + 1), timeout=30)
    # THEN it gets 413 and the function is not called
    assert reply.status_code == 413


def test_a_function_timeout_is_a_500(stack: LocalStack) -> None:
    # GIVEN a function with a 1 s timeout that sleeps 3 s
    started = time.monotonic()
    # WHEN it is called through the front
    reply = requests.post(f"{stack.api_url}/slow", json={}, timeout=30)
    # THEN API Gateway's 500 comes back once Lambda's timeout hits, not the function's late answer
    assert (reply.status_code, reply.json()) == (500, {"message": "Internal Server Error"})
    assert time.monotonic() - started < 2.9
    # AND Lambda reports the timeout as the invocation's error
    result = stack.invoke("SlowFunction", {})
    assert result.error is not None
    assert "timed out" in json.dumps(result.error)


def test_the_integration_timeout_is_a_503(stack: LocalStack) -> None:
    # GIVEN a front whose integration timeout (30 s in API Gateway) is shortened to 1 s
    assert stack.host is not None
    front = ApiGateway(stack.template.routes, stack.host.invoke, integration_timeout=1.0).start()
    try:
        started = time.monotonic()
        # WHEN the function takes 2.5 s (within its own 5 s timeout)
        reply = requests.post(f"{front.url}/echo", json={"sleep": 2.5}, timeout=30)
        # THEN the caller gets 503 after the integration timeout, not the function's answer
        assert (reply.status_code, reply.json()) == (503, {"message": "Service Unavailable"})
        assert time.monotonic() - started < 2.4
    finally:
        front.stop()


# ------------------------------------------------------------------------ Lambda runtime and API


def test_a_dependency_missing_from_layer_and_runtime_fails_as_in_lambda(stack: LocalStack) -> None:
    # GIVEN a function importing `requests`, which the test's own interpreter has but which is in
    # neither Lambda's python3.13 runtime nor the function's layer
    assert requests.__version__
    # WHEN it is called
    reply = requests.get(f"{stack.api_url}/needs-requests", timeout=30)
    result = stack.invoke("NeedsRequestsFunction", {})
    # THEN it fails to import, as it would in the cloud
    assert (reply.status_code, reply.json()) == (500, {"message": "Internal Server Error"})
    assert result.error is not None
    assert result.error["errorType"] == "Runtime.ImportModuleError"
    assert "requests" in result.error["errorMessage"]


def test_a_function_invokes_another_asynchronously(stack: LocalStack) -> None:
    # GIVEN a request asking the echo function to forward work to the worker (boto3 with
    # AWS_ENDPOINT_URL_LAMBDA, InvocationType=Event)
    item_id = f"fwd-{uuid.uuid4().hex[:8]}"
    # WHEN it is sent
    reply = requests.post(f"{stack.api_url}/echo", json={"forward": {"id": item_id}}, timeout=30)
    assert reply.status_code == 200, reply.text
    # THEN the worker ran once for it, writing to DynamoDB Local (AWS_ENDPOINT_URL_DYNAMODB)
    assert stack.wait_idle(30)
    assert work_item(stack, item_id)["attempts"] == {"N": "1"}


def test_a_failing_async_invocation_is_retried_then_recorded(stack: LocalStack) -> None:
    # GIVEN an event the worker always fails on (its EventInvokeConfig allows 1 retry)
    item_id = f"fail-{uuid.uuid4().hex[:8]}"
    payload = {"id": item_id, "fail": True}
    # WHEN it is invoked asynchronously through the Lambda API
    reply = stack.lambda_client().invoke(
        FunctionName="toy-WorkerFunction", InvocationType="Event", Payload=json.dumps(payload).encode()
    )
    assert reply["StatusCode"] == 202
    assert stack.wait_idle(30)
    # THEN it ran twice and then left an on-failure destination record
    assert work_item(stack, item_id)["attempts"] == {"N": "2"}
    records = [r for r in stack.failures if r["requestPayload"] == payload]
    assert len(records) == 1
    record = records[0]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert ":function:toy-WorkerFunction" in record["requestContext"]["functionArn"]
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    # AND the record is also appended to failures.jsonl
    lines = (STATE / "failures.jsonl").read_text().splitlines()
    assert any(json.loads(line)["requestPayload"] == payload for line in lines)


def test_the_lambda_api_answers_like_lambda(stack: LocalStack) -> None:
    client = stack.lambda_client()
    # GIVEN the worker's ARN
    arn = "arn:aws:lambda:us-east-1:123456789012:function:toy-WorkerFunction"
    # WHEN it is invoked synchronously, then with an event it fails on
    ok = client.invoke(FunctionName=arn, Payload=b'{"id": "sync-ok"}')
    failed = client.invoke(FunctionName="toy-WorkerFunction", Payload=b'{"id": "sync-fail", "fail": true}')
    # THEN the payload comes back, and a function error is flagged Unhandled with Lambda's error body
    assert ok["StatusCode"] == 200
    assert "FunctionError" not in ok
    assert json.loads(ok["Payload"].read()) == {
        "done": "sync-ok",
        "function": "toy-WorkerFunction",
        "layer": "toy_extra",
    }
    assert failed["FunctionError"] == "Unhandled"
    assert json.loads(failed["Payload"].read())["errorType"] == "RuntimeError"
    # AND DryRun answers 204, an unknown function ResourceNotFoundException
    assert client.invoke(FunctionName="toy-WorkerFunction", InvocationType="DryRun")["StatusCode"] == 204
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client.invoke(FunctionName="toy-NoSuchFunction", Payload=b"{}")
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_the_schedule_invokes_its_function_with_a_scheduler_event(stack: LocalStack) -> None:
    # GIVEN the worker's ScheduleV2 event
    # WHEN the schedule fires
    stack.run_schedule("WorkerFunction")
    assert stack.wait_idle(30)
    # THEN the worker got an EventBridge Scheduler event
    assert work_item(stack, "aws.scheduler")["detail_type"] == {"S": "Scheduled Event"}


# ------------------------------------------------------------------------------------- DynamoDB


def test_template_tables_exist_with_their_index_and_ttl(stack: LocalStack) -> None:
    # GIVEN the toy template's table (a GSI, TTL on expires_at, on-demand billing)
    name = stack.template.table_names["ItemsTable"]
    # WHEN DynamoDB Local is asked about it
    table = stack.client().describe_table(TableName=name)["Table"]
    ttl = stack.client().describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    # THEN it exists as declared
    assert name == "toy-ItemsTable"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["kind-index"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")

"""Writes the sample trigger payloads in ``events/`` (for ``sam local invoke -e`` and for reading).

The callback samples are encrypted and signed with the credentials in ``events/env.json``; that file
widens ``CALLBACK_MAX_SKEW_SECONDS`` so the recorded signatures stay acceptable when replayed (and
``DEDUP_TTL_SECONDS`` with it, which must outlive the window), and points the functions at a local KMS
(``python -m local.kms``) and its token key.
Run ``python -m local.sample_events`` after changing anything here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from feishu_mirror import crypto
from local import kms

EVENTS = Path(__file__).resolve().parent.parent / "events"
APP_ID = "cli_sample_app"
ENCRYPT_KEY = "sample-encrypt-key"
VERIFICATION_TOKEN = "sample-verification-token"
TIMESTAMP = "1764000000"
NONCE = "sample-nonce"
IV = bytes(range(16))  # fixed so the file is reproducible; Feishu uses a random IV


def http_event(
    method: str, path: str, *, query: str = "", body: str | None = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway HTTP API payload-format-2.0 event, as API Gateway builds it."""
    all_headers = {
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "x-forwarded-proto": "https",
        "x-forwarded-port": "443",
        "x-forwarded-for": "203.0.113.10",
        "user-agent": "Feishu-OpenPlatform" if path == "/feishu/events" else "Mozilla/5.0",
        **(headers or {}),
    }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": all_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": all_headers["user-agent"],
            },
            "requestId": "sample-request-id",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "24/Nov/2025:16:00:00 +0000",
            "timeEpoch": int(TIMESTAMP) * 1000,
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = dict(parse_qsl(query))  # decoded, as API Gateway delivers them
    if body is not None:
        event["body"] = body
    return event


def signed_callback(payload: dict[str, Any]) -> dict[str, Any]:
    """A callback event whose body is encrypted and signed like Feishu's."""
    plaintext = json.dumps(payload, separators=(",", ":")).encode()
    body = json.dumps({"encrypt": crypto.encrypt(crypto.derive_key(ENCRYPT_KEY), plaintext, IV)})
    signature = crypto.signature(TIMESTAMP, NONCE, ENCRYPT_KEY, body.encode())
    headers = {
        "content-type": "application/json; charset=utf-8",
        "x-lark-request-timestamp": TIMESTAMP,
        "x-lark-request-nonce": NONCE,
        "x-lark-signature": signature,
    }
    return http_event("POST", "/feishu/events", body=body, headers=headers)


def iam_signed(event: dict[str, Any], route_key: str, path_parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """An event of an IAM-authorised route, as API Gateway delivers it after checking the SigV4 signature."""
    event["routeKey"] = event["requestContext"]["routeKey"] = route_key
    event["requestContext"]["authorizer"] = {
        "iam": {
            "accessKey": "ASIASAMPLEACCESSKEY",
            "accountId": "123456789012",
            "callerId": "AROASAMPLEROLEID:operator",
            "principalOrgId": None,
            "userArn": "arn:aws:sts::123456789012:assumed-role/operator/operator",
            "userId": "AROASAMPLEROLEID:operator",
        }
    }
    if path_parameters:
        event["pathParameters"] = path_parameters
    return event


def calendar_renamed_record() -> dict[str, Any]:
    """A calendars-table stream record as Lambda delivers it: a calendar renamed by a sync."""
    key = {"open_id": {"S": "ou_sample_user"}, "calendar_id": {"S": "feishu.cn_sample@group.calendar.feishu.cn"}}
    fields = {
        "description": {"S": ""},
        "permissions": {"S": "private"},
        "color": {"N": "-1"},
        "type": {"S": "shared"},
        "summary_alias": {"S": ""},
        "is_third_party": {"BOOL": False},
        "role": {"S": "reader"},
    }
    return {
        "eventID": "c81e728d9d4c2f636f067f89cc14862c",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": int(TIMESTAMP),
            "Keys": key,
            "OldImage": {**key, **fields, "summary": {"S": "Team standup"}, "mirrored_at": {"N": "1763990000000"}},
            "NewImage": {
                **key,
                **fields,
                "summary": {"S": "Team standup (daily)"},
                "mirrored_at": {"N": "1764000000000"},
            },
            "SequenceNumber": "4200000000012345678901",
            "SizeBytes": 412,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/Calendars/stream/2025-11-24T16:00:00.000",
    }


def samples() -> dict[str, Any]:
    """Every sample file's name and content."""
    calendar_changed = {
        "schema": "2.0",
        "header": {
            "event_id": "5e3702a84e847582be8db7fb73283c02",
            "event_type": "calendar.calendar.changed_v4",
            "create_time": TIMESTAMP + "000",
            "token": VERIFICATION_TOKEN,
            "app_id": APP_ID,
            "tenant_key": "2ca1d211f64f6438",
        },
        "event": {"user_id_list": [{"union_id": "on_sample", "user_id": "sample", "open_id": "ou_sample_user"}]},
    }
    challenge = {"challenge": "ajls384kdjx98XX", "token": VERIFICATION_TOKEN, "type": "url_verification"}
    return {
        "callback-url-verification.json": signed_callback(challenge),
        "callback-calendar-changed.json": signed_callback(calendar_changed),
        "oauth-start.json": http_event("GET", "/oauth/start"),
        "oauth-callback.json": http_event("GET", "/oauth/callback", query="code=sample-code&state=sample-state"),
        "sync.json": {"open_id": "ou_sample_user", "reason": "calendar_changed"},
        "status-overview.json": iam_signed(
            http_event("GET", "/status", query="limit=50", headers={"accept": "application/json"}), "GET /status"
        ),
        "status-user.json": iam_signed(
            http_event("GET", "/status/ou_sample_user"), "GET /status/{open_id}", {"open_id": "ou_sample_user"}
        ),
        "status-resync.json": iam_signed(
            http_event("POST", "/status/ou_sample_user/resync", headers={"accept": "application/json"}),
            "POST /status/{open_id}/resync",
            {"open_id": "ou_sample_user"},
        ),
        "agenda-calendars.json": iam_signed(
            http_event("GET", "/v1/users/ou_sample_user/calendars"),
            "GET /v1/users/{open_id}/calendars",
            {"open_id": "ou_sample_user"},
        ),
        "agenda-week.json": iam_signed(
            http_event(
                "GET",
                "/v1/users/ou_sample_user/agenda",
                query="from=2025-11-24T00:00:00%2B08:00&to=2025-12-01T00:00:00%2B08:00",
            ),
            "GET /v1/users/{open_id}/agenda",
            {"open_id": "ou_sample_user"},
        ),
        "agenda-freebusy.json": iam_signed(
            http_event(
                "GET",
                "/v1/freebusy",
                query="open_ids=ou_sample_user,ou_sample_other&from=2025-11-24T01:00:00Z&to=2025-11-24T10:00:00Z",
            ),
            "GET /v1/freebusy",
        ),
        "publisher-calendar-renamed.json": {"Records": [calendar_renamed_record()]},
        "resync-schedule.json": {
            "version": "0",
            "id": "sample-schedule-event",
            "detail-type": "Scheduled Event",
            "source": "aws.scheduler",
            "account": "123456789012",
            "time": "2025-11-24T16:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:scheduler:us-east-1:123456789012:schedule/default/resync"],
            "detail": {},
        },
        "env.json": {
            "Parameters": {
                "FEISHU_APP_ID": APP_ID,
                "FEISHU_APP_SECRET": "sample-app-secret",
                "FEISHU_ENCRYPT_KEY": ENCRYPT_KEY,
                "FEISHU_VERIFICATION_TOKEN": VERIFICATION_TOKEN,
                "CALLBACK_MAX_SKEW_SECONDS": "315360000",
                "DEDUP_TTL_SECONDS": "315446400",  # must outlive the timestamp window
                "POWERTOOLS_TRACE_DISABLED": "true",
                "AWS_ENDPOINT_URL_KMS": f"http://host.docker.internal:{kms.SAM_LOCAL_PORT}",
                "TOKEN_KEY_ID": kms.SAM_LOCAL_KEY_ALIAS,
            }
        },
    }


def main() -> None:
    """Write every sample file."""
    for name, content in samples().items():
        (EVENTS / name).write_text(json.dumps(content, indent=2) + "\n")
        print(f"wrote events/{name}")


if __name__ == "__main__":
    main()

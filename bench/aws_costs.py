"""What a month of the mirror costs on AWS, from billable units, at public on-demand prices.

Prices are AWS's list prices for us-east-1 (N. Virginia), on-demand, without free tiers (a fleet of
thousands of users is past them) and without savings plans, as published for 2025–2026:

| service | price |
|---|---|
| Lambda, arm64 | $0.0000133334 per GB-second, $0.20 per million requests |
| DynamoDB on demand | $0.625 per million write request units, $0.125 per million read request units, $0.25 per GB-month stored, $0.20 per GB-month of point-in-time recovery |
| API Gateway HTTP API | $1.00 per million requests |
| Secrets Manager | $0.40 per secret-month, $0.05 per 10,000 API calls |
| KMS | $1.00 per customer-managed key-month, $0.03 per 10,000 requests |
| CloudWatch | Logs $0.50 per GB ingested, $0.03 per GB-month stored; $0.30 per custom metric-month; $0.10 per alarm-month; $3.00 per dashboard-month |
| EventBridge | $1.00 per million custom events (PutEvents, per 64 KB); Scheduler $1.00 per million invocations |
| X-Ray | $5.00 per million traces recorded |
| SQS | $0.40 per million requests |

DynamoDB Streams read by Lambda triggers cost nothing; data coming in from Feishu costs nothing, and
what goes out to it (requests of about a kilobyte) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

PRICES = {
    "lambda_gb_second": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    "dynamodb_write_unit": 0.625 / 1e6,
    "dynamodb_read_unit": 0.125 / 1e6,
    "dynamodb_storage_gb_month": 0.25,
    "dynamodb_pitr_gb_month": 0.20,
    "http_api_request": 1.00 / 1e6,
    "secret_month": 0.40,
    "secrets_manager_call": 0.05 / 10_000,
    "kms_key_month": 1.00,
    "kms_request": 0.03 / 10_000,
    "logs_ingested_gb": 0.50,
    "logs_stored_gb_month": 0.03,
    "custom_metric_month": 0.30,
    "alarm_month": 0.10,
    "dashboard_month": 3.00,
    "eventbridge_event": 1.00 / 1e6,
    "scheduler_invocation": 1.00 / 1e6,
    "xray_trace": 5.00 / 1e6,
    "sqs_request": 0.40 / 1e6,
}
LOG_RETENTION_MONTHS = 1.0  # the template's LogRetentionDays default, 30


@dataclass(frozen=True, slots=True)
class Usage:
    """One month of billable units."""

    lambda_gb_seconds: float = 0.0
    lambda_requests: float = 0.0
    dynamodb_write_units: float = 0.0
    dynamodb_read_units: float = 0.0
    dynamodb_gb: float = 0.0  # stored, on average over the month (point-in-time recovery on every table)
    http_api_requests: float = 0.0
    secrets: float = 0.0
    secrets_manager_calls: float = 0.0
    kms_keys: float = 0.0
    kms_requests: float = 0.0
    log_gb: float = 0.0
    custom_metrics: float = 0.0
    alarms: float = 0.0
    dashboards: float = 0.0
    eventbridge_events: float = 0.0
    scheduler_invocations: float = 0.0
    xray_traces: float = 0.0
    sqs_requests: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, factor: float) -> Usage:
        """Every unit times ``factor``."""
        return Usage(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


def monthly_cost(usage: Usage) -> dict[str, float]:
    """Dollars per service for one month of ``usage``."""
    p = PRICES
    return {
        "Lambda": usage.lambda_gb_seconds * p["lambda_gb_second"] + usage.lambda_requests * p["lambda_request"],
        "DynamoDB": usage.dynamodb_write_units * p["dynamodb_write_unit"]
        + usage.dynamodb_read_units * p["dynamodb_read_unit"]
        + usage.dynamodb_gb * (p["dynamodb_storage_gb_month"] + p["dynamodb_pitr_gb_month"]),
        "API Gateway": usage.http_api_requests * p["http_api_request"],
        "Secrets Manager": usage.secrets * p["secret_month"] + usage.secrets_manager_calls * p["secrets_manager_call"],
        "KMS": usage.kms_keys * p["kms_key_month"] + usage.kms_requests * p["kms_request"],
        "CloudWatch": usage.log_gb * (p["logs_ingested_gb"] + p["logs_stored_gb_month"] * LOG_RETENTION_MONTHS)
        + usage.custom_metrics * p["custom_metric_month"]
        + usage.alarms * p["alarm_month"]
        + usage.dashboards * p["dashboard_month"],
        "EventBridge": usage.eventbridge_events * p["eventbridge_event"]
        + usage.scheduler_invocations * p["scheduler_invocation"],
        "X-Ray": usage.xray_traces * p["xray_trace"],
        "SQS": usage.sqs_requests * p["sqs_request"],
    }


def total(usage: Usage) -> float:
    """Dollars for one month of ``usage``."""
    return sum(monthly_cost(usage).values())

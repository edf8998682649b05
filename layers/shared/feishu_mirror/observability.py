"""The one Logger, Tracer and Metrics of the service (Powertools), shared by every module.

Service name and namespace come from ``POWERTOOLS_SERVICE_NAME`` / ``POWERTOOLS_METRICS_NAMESPACE``.
Log with keys (``logger.info("calendars_applied", extra={...})``) and never log a token or secret.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def count(name: str, value: float = 1) -> None:
    """Add one business-metric data point (unit Count)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

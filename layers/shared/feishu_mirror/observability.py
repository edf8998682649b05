"""The one Logger and Metrics of the service (Powertools), shared by every module.

Service name and namespace come from ``POWERTOOLS_SERVICE_NAME`` / ``POWERTOOLS_METRICS_NAMESPACE``.
Log with keys (``logger.info("calendars_applied", extra={...})``) and never log a token or secret.
The Tracer lives with the handlers that use it: importing it loads the X-Ray SDK (~0.3 s), which the
callback's acknowledgement path does not need (Lambda's active tracing still records it).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()


def count(name: str, value: float = 1) -> None:
    """Add one business-metric data point (unit Count)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

"""Resync function: on its schedule, starts syncs for users that are due (see ``feishu_mirror.resync``)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from feishu_mirror import composition
from feishu_mirror.config import Settings
from feishu_mirror.observability import logger, metrics

settings = Settings.from_env("USERS_TABLE", "SYNC_FUNCTION_NAME")
tracer = Tracer()
resync = composition.for_lambda(settings).resync


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(_event: dict[str, Any], _context: LambdaContext) -> dict[str, Any]:
    """Scheduled-event handler (the event's content is not used)."""
    return resync.sweep().as_dict()

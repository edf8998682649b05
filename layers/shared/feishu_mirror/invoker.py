"""Starting syncs: the asynchronous Lambda invoke of the sync function, one user per invocation.

The request is ``{"open_id", "reason", "delivery_id"}``; ``delivery_id`` (the push's ``header.event_id``,
for the sync's logs) is there only when a push started the sync. Requests queued before it had that name
carry it as ``event_id``: the sync function reads both (see ``functions/sync/app.py``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient


class SyncInvoker(Protocol):
    """Something that starts a sync for one user in the background."""

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        """Start the sync; raises on failure to hand it over. ``claimed_at``: when the resync claimed the
        user for it (the sync does nothing if the user was synced since: a claim that lapsed)."""


class LambdaSyncInvoker:
    """Invokes the sync function with ``InvocationType=Event`` (Lambda queues and retries it)."""

    def __init__(self, client: LambdaClient, function_name: str) -> None:
        self._client = client
        self._function_name = function_name

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        """Queue ``{"open_id": ..., "reason": ..., "delivery_id": ..., "claimed_at": ...}`` for the sync function."""
        request: dict[str, str | int] = {"open_id": open_id, "reason": reason}
        if delivery_id:
            request["delivery_id"] = delivery_id
        if claimed_at:
            request["claimed_at"] = claimed_at
        payload = json.dumps(request).encode("utf-8")
        self._client.invoke(FunctionName=self._function_name, InvocationType="Event", Payload=payload)

"""The Feishu rate gate's table: one item per Feishu API, ``<bucket>|<api>``, holding the time of that
API's next request slot (``DynamoRateGate``, the ``feishu.RateGate`` every Feishu call goes through)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from feishu_mirror.dynamodb.calls import is_condition_failure
from feishu_mirror.dynamodb.values import attribute_value, attribute_values, plain
from feishu_mirror.errors import DeadlineExceeded

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient


class DynamoRateGate:
    """A request scheduler per Feishu API, shared by every Lambda container.

    Feishu limits each API (method and path template) on its own, per app and tenant, in two windows
    (1,000/min and 50/s for the calendar APIs), so each API has its own item, ``<bucket>|<api>``, holding
    the theoretical time of its next request (a generic cell rate algorithm). A request reserves a slot
    with one conditional update: slots are ``60 s / requests_per_minute`` apart, and up to ``burst``
    requests may go early after a quiet spell. In any window of ``w`` seconds an API therefore starts at
    most ``w · rate + burst + 1`` requests, whatever the concurrency: at 950/min and a burst of 10, 961 a
    minute and 26 a second, under Feishu's limits with room for clock skew and network jitter. A caller
    whose slot lies beyond its deadline raises ``DeadlineExceeded`` (the slot is wasted, which only
    makes the gate more conservative).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        bucket: str,
        *,
        requests_per_minute: int = 950,
        burst: int = 10,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table_name
        self._bucket = bucket
        self._interval_us = 60_000_000 // requests_per_minute
        self._tolerance_us = burst * self._interval_us
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        # The last next-slot time seen per API: says which of the two updates will most likely succeed,
        # so a steady stream and a quiet API each cost one update per request.
        self._last_seen_us: dict[str, int] = {}
        self.waited_seconds = 0.0

    def acquire(self, api: str, deadline: float) -> None:
        """Reserve the next slot of ``api`` and sleep until it comes; raises ``DeadlineExceeded``."""
        slot_us = self._reserve(api)
        wait = slot_us / 1_000_000 - self._clock()
        if wait <= 0:
            return
        if self._monotonic() + wait >= deadline:
            raise DeadlineExceeded(f"the Feishu rate gate has no slot for {api} before the deadline")
        self.waited_seconds += wait
        self._sleep(wait)

    def _reserve(self, api: str) -> int:
        """The start time (µs since the epoch) of the slot reserved for one request to ``api``."""
        key = {"bucket": attribute_value(f"{self._bucket}|{api}")}
        for _ in range(20):
            now_us = int(self._clock() * 1_000_000)
            ttl = now_us // 1_000_000 + 86400
            busy_first = self._last_seen_us.get(api, 0) > now_us
            for busy in (busy_first, not busy_first):
                try:
                    if busy:  # requests are queued: take the slot after the last one handed out
                        response = self._client.update_item(
                            TableName=self._table,
                            Key=key,
                            UpdateExpression="SET next_at = next_at + :i, expires_at = :ttl",
                            ConditionExpression="next_at > :now",
                            ExpressionAttributeValues=attribute_values(
                                {":i": self._interval_us, ":now": now_us, ":ttl": ttl}
                            ),
                            ReturnValues="UPDATED_NEW",
                        )
                        next_at = int(plain(response["Attributes"])["next_at"])
                        self._last_seen_us[api] = next_at
                        return max(now_us, next_at - self._interval_us - self._tolerance_us)
                    # the API is quiet: the slot is now
                    self._client.update_item(
                        TableName=self._table,
                        Key=key,
                        UpdateExpression="SET next_at = :next, expires_at = :ttl",
                        ConditionExpression="attribute_not_exists(next_at) OR next_at <= :now",
                        ExpressionAttributeValues=attribute_values(
                            {":next": now_us + self._interval_us, ":now": now_us, ":ttl": ttl}
                        ),
                    )
                    self._last_seen_us[api] = now_us + self._interval_us
                    return now_us
                except ClientError as exc:
                    if not is_condition_failure(exc):
                        raise
        raise RuntimeError(f"could not reserve a Feishu request slot for {api}")

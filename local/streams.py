"""Lambda's DynamoDB event source mappings, locally: DynamoDB Local's streams → the template's functions.

For each ``DynamoDB`` event of a function (``StreamSource``), a ``StreamPoller`` reads the table's
stream shard by shard (a parent shard before its children) from the mapping's starting position and
invokes the function synchronously with a batch at a time per shard, as Lambda does: records shaped
like Lambda's DynamoDB event (``eventSourceARN`` added, binary values base64, times in epoch seconds);
an error is retried (``BisectBatchOnFunctionError`` halves the batch first); with
``ReportBatchItemFailures`` a ``batchItemFailures`` answer is retried from the earliest failed record
(an unknown or empty identifier fails the whole batch); after ``MaximumRetryAttempts`` the batch's
on-failure record (``DDBStreamBatchInfo``) is recorded and the mapping moves on. Not emulated:
``MaximumBatchingWindowInSeconds`` (a batch is whatever is there), ``MaximumRecordAgeInSeconds`` and
``ParallelizationFactor``.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from local.lambdas import Invocation
from local.template import ACCOUNT, REGION, StreamSource, Template

POLL_INTERVAL = 0.05
DESCRIBE_INTERVAL = 5.0
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0)  # Lambda backs off for seconds; locally a test should not wait that long

Invoke = Callable[[str, Any], Invocation]


def _json_ready(value: Any) -> Any:
    """botocore's parsed stream values as Lambda's JSON has them (bytes → base64, datetimes → epoch s)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, dict):
        return {key: _json_ready(member) for key, member in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_ready(member) for member in value]
    return value


def lambda_record(record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A GetRecords record as Lambda puts it in the event of a DynamoDB event source."""
    shaped: dict[str, Any] = _json_ready(dict(record))
    shaped["awsRegion"] = REGION
    shaped["eventSourceARN"] = stream_arn
    return shaped


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


@dataclass
class _Shard:
    shard_id: str
    parent: str | None
    position: str  # where reading started: TRIM_HORIZON or LATEST
    iterator: str | None = None
    checkpoint: str | None = None  # sequence number of the last record handled (delivered or given up)
    done: bool = False


class StreamPoller:
    """One event source mapping: a table's stream → a function, one batch at a time, shard by shard."""

    def __init__(
        self,
        source: StreamSource,
        *,
        stream_arn: str,
        function_name: str,
        streams: Any,
        invoke: Invoke,
        on_failure: Callable[[dict[str, Any]], None],
        poll_interval: float = POLL_INTERVAL,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.source = source
        self.stream_arn = stream_arn
        # what Lambda shows the function: the stream's ARN in the region of the stack
        self.event_source_arn = stream_arn.replace(":ddblocal:", f":{REGION}:")
        self._function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self._streams = streams
        self._invoke = invoke
        self._on_failure = on_failure
        self._poll_interval = poll_interval
        self._retry_delays = retry_delays
        self._shards: dict[str, _Shard] = {}
        self._stopping = threading.Event()
        self._state = threading.Condition()
        self._quiet_since: float | None = None  # start of the last poll cycle that found nothing
        self._described_at = 0.0
        self.invocations = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"stream-{source.table}")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> StreamPoller:
        """Read the shards' starting positions, then poll in the background."""
        self._describe(self.source.starting_position)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (an invocation under way finishes)."""
        self._stopping.set()

    def drained_since(self, moment: float, timeout: float) -> bool:
        """Wait until a poll cycle that started at or after ``moment`` (monotonic) found no record."""
        with self._state:
            return self._state.wait_for(
                lambda: self._quiet_since is not None and self._quiet_since >= moment, timeout=timeout
            )

    # ------------------------------------------------------------------ polling
    def _describe(self, position: str = "TRIM_HORIZON") -> None:
        """Learn new shards; shards found when the mapping starts begin at ``position``, later ones at
        their beginning (they hold only records written since)."""
        request: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self._streams.describe_stream(**request)["StreamDescription"]
            for shard in description.get("Shards", []):
                if shard["ShardId"] in self._shards:
                    continue
                found = _Shard(shard["ShardId"], shard.get("ParentShardId"), position)
                self._shards[found.shard_id] = found
                self._reposition(found)
            last = description.get("LastEvaluatedShardId")
            if not last:
                break
            request["ExclusiveStartShardId"] = last
        self._described_at = time.monotonic()

    def _reposition(self, shard: _Shard, *, trimmed: bool = False) -> None:
        """A fresh iterator just after the shard's checkpoint (or at its starting position; at its oldest
        record when the position was trimmed)."""
        position = "TRIM_HORIZON" if trimmed else shard.position
        request = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id, "ShardIteratorType": position}
        if shard.checkpoint is not None and not trimmed:
            request |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": shard.checkpoint}
        shard.iterator = self._streams.get_shard_iterator(**request)["ShardIterator"]

    def _ready(self) -> list[_Shard]:
        """Shards to read now: not finished, and their parent finished (or no longer listed)."""
        ready = []
        for shard in self._shards.values():
            parent = self._shards.get(shard.parent) if shard.parent else None
            if not shard.done and (parent is None or parent.done):
                ready.append(shard)
        return ready

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                if started - self._described_at > DESCRIBE_INTERVAL:
                    self._describe()
                found = self._cycle()
            except Exception as exc:
                if self._stopping.is_set():
                    return
                sys.stderr.write(f"stream poller {self.source.table}: {type(exc).__name__}: {exc}\n")
                self._stopping.wait(1.0)
                self._recover()
                continue
            with self._state:
                self._quiet_since = None if found else started
                self._state.notify_all()
            if not found:
                self._stopping.wait(self._poll_interval)

    def _recover(self) -> None:
        """After an error (an expired iterator, say): new iterators from each shard's checkpoint."""
        for shard in self._shards.values():
            if not shard.done:
                try:
                    self._reposition(shard)
                except Exception as exc:
                    sys.stderr.write(f"stream poller {self.source.table}: {type(exc).__name__}: {exc}\n")

    def _cycle(self) -> bool:
        """One GetRecords per ready shard, each batch delivered; True when any record was found."""
        found = False
        for shard in self._ready():
            if self._stopping.is_set():
                return found
            try:
                page = self._streams.get_records(ShardIterator=shard.iterator, Limit=self.source.batch_size)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TrimmedDataAccessException":
                    raise
                # The iterator points before the shard's oldest record. DynamoDB Local does this to an
                # iterator taken while the shard was empty once other tables' writes have moved its
                # (global) sequence numbers on; in AWS it means the records aged out. Either way Lambda
                # goes on from the oldest record there is.
                self._reposition(shard, trimmed=True)
                found = True
                continue
            shard.iterator = page.get("NextShardIterator")
            records = page.get("Records") or []
            if records:
                found = True
                self._deliver(shard.shard_id, [lambda_record(r, self.event_source_arn) for r in records], 0)
                shard.checkpoint = records[-1]["dynamodb"]["SequenceNumber"]
            if shard.iterator is None:  # a closed shard, read to its end: its children come next
                shard.done = True
                self._describe()
                found = True
        return found

    # ------------------------------------------------------------------ delivery
    def _deliver(self, shard_id: str, records: list[dict[str, Any]], attempts: int) -> None:
        """Invoke until the batch succeeds or runs out of retries (``attempts`` already made)."""
        while records and not self._stopping.is_set():
            result = self._invoke(self.source.function, {"Records": records})
            self.invocations += 1
            failed_at = self._failed_from(records, result)
            if failed_at is None:
                return
            attempts += 1
            if result.error is not None and self.source.bisect_on_error and len(records) > 1:
                half = len(records) // 2
                self._deliver(shard_id, records[:half], attempts)
                self._deliver(shard_id, records[half:], attempts)
                return
            records = records[failed_at:]
            if 0 <= self.source.max_retry_attempts < attempts:
                self._give_up(shard_id, records, attempts, result)
                return
            self._stopping.wait(self._retry_delays[min(attempts - 1, len(self._retry_delays) - 1)])

    def _failed_from(self, records: list[dict[str, Any]], result: Invocation) -> int | None:
        """None when the batch succeeded, else the index of the first record to retry."""
        if result.error is not None:
            return 0
        payload = result.payload
        if not self.source.report_batch_item_failures or not isinstance(payload, dict):
            return None
        failures = payload.get("batchItemFailures")
        if not failures:
            return None
        positions = {record["dynamodb"]["SequenceNumber"]: n for n, record in enumerate(records)}
        found: list[int] = []
        for failure in failures if isinstance(failures, list) else [None]:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not identifier or identifier not in positions:
                return 0  # Lambda treats an unusable answer as a failure of the whole batch
            found.append(positions[identifier])
        return min(found)

    def _give_up(self, shard_id: str, records: list[dict[str, Any]], attempts: int, result: Invocation) -> None:
        """Record the on-failure destination record (it names the records, it does not hold them)."""
        first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
        record = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self._function_arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                **({"functionError": "Unhandled"} if result.error is not None else {}),
            },
            "version": "1.0",
            "timestamp": _iso(time.time()),
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(float(first.get("ApproximateCreationDateTime", 0))),
                "approximateArrivalOfLastRecord": _iso(float(last.get("ApproximateCreationDateTime", 0))),
                "batchSize": len(records),
                "streamArn": self.event_source_arn,
            },
        }
        self._on_failure(record)


class StreamMappings:
    """Every ``DynamoDB`` event source of a template, polling DynamoDB Local's streams."""

    def __init__(
        self,
        template: Template,
        *,
        dynamodb: Any,
        streams: Any,
        invoke: Invoke,
        failures_file: Path | None = None,
        **poller_options: Any,
    ) -> None:
        self.failures: list[dict[str, Any]] = []
        self._failures_file = failures_file
        self._lock = threading.Lock()
        self.pollers: list[StreamPoller] = []
        for source in template.stream_sources:
            table = dynamodb.describe_table(TableName=template.table_names[source.table])["Table"]
            if "LatestStreamArn" not in table:
                raise ValueError(f"{source.function}: table {source.table} has no stream")
            self.pollers.append(
                StreamPoller(
                    source,
                    stream_arn=table["LatestStreamArn"],
                    function_name=template.functions[source.function].name,
                    streams=streams,
                    invoke=invoke,
                    on_failure=self._record_failure,
                    **poller_options,
                )
            )

    def start(self) -> StreamMappings:
        """Start every poller."""
        for poller in self.pollers:
            poller.start()
        return self

    def stop(self) -> None:
        """Stop every poller."""
        for poller in self.pollers:
            poller.stop()

    def wait_drained(self, timeout: float = 60) -> bool:
        """Wait until every stream was read to its end after this call (and its batches delivered)."""
        moment = time.monotonic()
        deadline = moment + timeout
        return all(poller.drained_since(moment, max(0.0, deadline - time.monotonic())) for poller in self.pollers)

    def _record_failure(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.failures.append(record)
            if self._failures_file is not None:
                self._failures_file.parent.mkdir(parents=True, exist_ok=True)
                with self._failures_file.open("a") as out:
                    out.write(json.dumps(record) + "\n")

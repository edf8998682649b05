"""Records the AWS API calls code makes, as the IAM actions and resources each call needs.

A hook on botocore's event system (``before-parameter-build`` to read the request, ``after-call`` /
``after-call-error`` to see how it ended) turns every call into ``Call`` records: who made it (a
function's logical id), the IAM action (a transaction becomes one action per item: ``ConditionCheckItem``,
``PutItem``, ``UpdateItem``, ``DeleteItem``; a Lambda ``Invoke`` is ``lambda:InvokeFunction``), the
resource (``table/UsersTable``, ``table/UsersTable/index/due-index``, ``function/SyncFunction``,
``key/TokenKey``, ``event-bus/ChangeBus``, by logical id where the name is known) and the capacity the
response reports (``ConsumedCapacity``, when the request asked for it).

``CallRecorder.attach`` records one client (tests, benchmarks); ``install_from_environment`` records
every client a process creates, which is how the local stack records its function processes (a
``sitecustomize`` it puts on their path calls it). Only the standard library and botocore are used:
this module runs inside the Lambda runtime the local stack gives the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTEXT_KEY = "local_aws_call_recorder"
TRANSACT_ACTIONS = {
    "ConditionCheck": "ConditionCheckItem",
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
}


@dataclass(frozen=True, slots=True)
class Call:
    """One IAM action on one resource, as one API call needed it."""

    function: str
    action: str
    resource: str
    capacity_units: float | None = None
    failed: bool = False


def _last(name: str, separator: str) -> str:
    return name.rsplit(separator, 1)[-1]


def _dynamodb(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    if operation == "TransactWriteItems":
        return [
            (f"dynamodb:{TRANSACT_ACTIONS[kind]}", f"table/{body['TableName']}")
            for item in params.get("TransactItems", [])
            for kind, body in item.items()
        ]
    if operation == "TransactGetItems":
        return [("dynamodb:GetItem", f"table/{i['Get']['TableName']}") for i in params.get("TransactItems", [])]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", f"table/{table}") for table in params.get("RequestItems", {})]
    resource = f"table/{params.get('TableName', '*')}"
    if params.get("IndexName"):
        resource += f"/index/{params['IndexName']}"
    return [(f"dynamodb:{operation}", resource)]


def required(service: str, operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (IAM action, resource) pairs a request needs, resources by physical name."""
    pairs = [(f"{service}:{operation}", "*")]
    if service == "dynamodb":
        pairs = _dynamodb(operation, params)
    elif service == "lambda" and operation == "Invoke":
        name = str(params.get("FunctionName", "*"))
        pairs = [("lambda:InvokeFunction", f"function/{_last(name, ':function:').split(':')[0]}")]
    elif service == "kms":
        pairs = [(f"kms:{operation}", f"key/{params.get('KeyId', '*')}")]
    elif service == "events" and operation == "PutEvents":
        buses = {str(entry.get("EventBusName") or "default") for entry in params.get("Entries", [])}
        pairs = [("events:PutEvents", f"event-bus/{_last(bus, '/')}") for bus in sorted(buses)]
    elif service == "secretsmanager":
        pairs = [(f"secretsmanager:{operation}", f"secret/{params.get('SecretId', '*')}")]
    return pairs


def _capacity(parsed: Mapping[str, Any]) -> float | None:
    consumed = parsed.get("ConsumedCapacity")
    if consumed is None:
        return None
    entries = consumed if isinstance(consumed, list) else [consumed]
    return float(sum(entry.get("CapacityUnits", 0) for entry in entries))


class CallRecorder:
    """Turns the calls of the clients it is attached to into ``Call`` records handed to ``sink``.

    ``function`` names who makes every call; without it only calls made inside ``acting_as`` (on the
    same thread) are recorded. ``resolve`` maps a physical name (a table, function, bus, key ARN) to
    a logical id; unknown names are kept as they are.
    """

    def __init__(
        self,
        sink: Callable[[Call], None],
        *,
        function: str | None = None,
        resolve: Callable[[str], str] = lambda name: name,
    ) -> None:
        self._sink = sink
        self._function = function
        self._resolve = resolve
        self._acting = threading.local()

    @contextlib.contextmanager
    def acting_as(self, function: str) -> Iterator[None]:
        """Attribute the calls this thread makes inside the block to ``function``."""
        previous = getattr(self._acting, "function", None)
        self._acting.function = function
        try:
            yield
        finally:
            self._acting.function = previous

    def attach(self, client: Any) -> Any:
        """Record the calls of this botocore client; returns it."""
        events = client.meta.events
        events.register("before-parameter-build", self._before)
        events.register("after-call", self._after)
        events.register("after-call-error", self._after_error)
        return client

    def _who(self) -> str | None:
        return self._function or getattr(self._acting, "function", None)

    def _before(self, params: Mapping[str, Any], model: Any, context: dict[str, Any], **_kwargs: Any) -> None:
        who = self._who()
        if who is None:
            return
        service = model.service_model.endpoint_prefix
        pairs = required(service, model.name, params)
        context[CONTEXT_KEY] = [(who, action, self._resource(resource)) for action, resource in pairs]

    def _resource(self, resource: str) -> str:
        kind, _, name = resource.partition("/")
        if kind != "table":
            return f"{kind}/{self._resolve(name)}"
        table, sep, index = name.partition("/")  # table/<name>/index/<index>
        return f"{kind}/{self._resolve(table)}{sep}{index}"

    def _after(self, parsed: Mapping[str, Any], context: dict[str, Any], http_response: Any, **_kwargs: Any) -> None:
        failed = getattr(http_response, "status_code", 200) >= 300
        self._emit(context, _capacity(parsed or {}), failed=failed)

    def _after_error(self, context: dict[str, Any], **_kwargs: Any) -> None:
        self._emit(context, None, failed=True)

    def _emit(self, context: dict[str, Any], capacity: float | None, *, failed: bool) -> None:
        for who, action, resource in context.pop(CONTEXT_KEY, ()):
            self._sink(Call(who, action, resource, capacity, failed))


class JsonLinesSink:
    """Appends each distinct (function, action, resource) to a JSON-lines file, once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, call: Call) -> None:
        key = (call.function, call.action, call.resource)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            with self.path.open("a") as out:
                out.write(
                    json.dumps({"function": call.function, "action": call.action, "resource": call.resource}) + "\n"
                )


def read_calls(directory: Path) -> set[tuple[str, str, str]]:
    """Every (function, action, resource) recorded in a directory's JSON-lines files."""
    found: set[tuple[str, str, str]] = set()
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                found.add((record["function"], record["action"], record["resource"]))
    return found


def name_resolver(
    names: Mapping[str, str], logical_ids: set[str] | frozenset[str] = frozenset()
) -> Callable[[str], str]:
    """Physical name → logical id: from ``names``, else a ``<prefix>-<LogicalId>`` name's suffix."""

    def resolve(name: str) -> str:
        if name in names:
            return names[name]
        suffix = _last(name, "-")
        return suffix if suffix in logical_ids else name

    return resolve


SITE_HOOK = """# Written by the local stack: records this function process's AWS calls (local/aws_calls.py).
import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("local_aws_calls", {path!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules["local_aws_calls"] = _module
_spec.loader.exec_module(_module)
_module.install_from_environment()
"""


def write_site_hook(directory: Path) -> Path:
    """A directory holding a ``sitecustomize.py`` that records the calls of any Python started with it on
    ``PYTHONPATH`` (see ``install_from_environment``); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITE_HOOK.format(path=str(Path(__file__).resolve())))
    return directory


def install_from_environment() -> None:
    """Record every botocore client this process creates, when ``LOCAL_AWS_CALL_LOG`` names a directory.

    ``LOCAL_AWS_CALL_FUNCTION`` is the logical id of the function this process runs and
    ``LOCAL_AWS_CALL_NAMES`` a JSON object of physical name → logical id.
    """
    directory = os.environ.get("LOCAL_AWS_CALL_LOG")
    function = os.environ.get("LOCAL_AWS_CALL_FUNCTION")
    if not directory or not function:
        return
    import botocore.session  # noqa: PLC0415 - only in a recorded process

    names = json.loads(os.environ.get("LOCAL_AWS_CALL_NAMES") or "{}")
    recorder = CallRecorder(
        JsonLinesSink(Path(directory) / f"{function}-{os.getpid()}.jsonl"),
        function=function,
        resolve=name_resolver(names),
    )
    create_client = botocore.session.Session.create_client

    def recorded_create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        return recorder.attach(create_client(self, *args, **kwargs))

    botocore.session.Session.create_client = recorded_create_client  # type: ignore[method-assign]

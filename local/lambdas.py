"""The template's functions run the way Lambda runs them, without Docker.

* ``build_runtime``: a Python 3.13 virtualenv with only what Lambda's python3.13 runtime provides
  (``awslambdaric`` and ``boto3``) and each layer built like SAM's python BuildMethod, for the host's
  architecture, under ``.local/``; the layer's own package is symlinked so edits need no rebuild.
* ``FunctionHost``: per function, a pool of runtime interface emulator (RIE) processes — the RIE is
  shipped in the ``aws-sam-cli`` wheel. One invocation per process at a time.
* ``LambdaApi``: the Lambda Invoke API on loopback, so boto3's ``invoke`` (``AWS_ENDPOINT_URL_LAMBDA``)
  works: ``RequestResponse`` runs at once, ``Event`` is queued, retried like Lambda and recorded as an
  on-failure destination record when retries run out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import requests

from local.aws_calls import write_site_hook
from local.dynamodb_local import free_port
from local.http import LoopbackHandler, serve
from local.processes import spawn, terminate
from local.template import Function, Template

RUNTIME_PACKAGES = ("awslambdaric==4.2.2", "boto3==1.43.108")
ASYNC_RETRY_DELAYS = (1.0, 2.0)
ASYNC_WORKERS = 8  # queued events wait for a free emulator of their function
ERROR_KEYS = {"errorType", "errorMessage", "stackTrace", "requestId", "cause"}  # a runtime's error body


def _rie_binary() -> Path:
    import samcli  # noqa: PLC0415 - only for its location

    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    return Path(samcli.__file__).parent / "local" / "rapid" / f"aws-lambda-rie-{arch}"


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"pip install {' '.join(args)} failed")


def build_runtime(template: Template, state: Path) -> tuple[Path, list[Path]]:
    """The runtime interpreter and the layer directories (like ``/opt/python``), built once."""
    venv = state / "runtime-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".packages"
    if not python.exists() or not stamp.exists() or stamp.read_text() != " ".join(RUNTIME_PACKAGES):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        _pip(python, *RUNTIME_PACKAGES)
        stamp.write_text(" ".join(RUNTIME_PACKAGES))
    layer_dirs: list[Path] = []
    for logical_id, source in template.layers.items():
        target = state / "layers" / logical_id / "python"
        requirements = source / "requirements.txt"
        digest = hashlib.sha256(requirements.read_bytes()).hexdigest() if requirements.exists() else "none"
        layer_stamp = target.parent / ".requirements-sha256"
        if not layer_stamp.exists() or layer_stamp.read_text() != digest:
            # From scratch: a requirement removed from requirements.txt must disappear from the layer.
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True, exist_ok=True)
            if requirements.exists():
                _pip(python, "--upgrade", "--target", str(target), "-r", str(requirements))
            layer_stamp.write_text(digest)
        for entry in source.iterdir():
            if entry.name in ("requirements.txt", "Makefile") or entry.name.startswith((".", "__pycache__")):
                continue
            link = target / entry.name
            if link.is_symlink() or not link.exists():
                link.unlink(missing_ok=True)
                link.symlink_to(entry.resolve())
        layer_dirs.append(target)
    return python, layer_dirs


def lambda_environment(function: Function, layers: list[Path], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment Lambda gives ``function`` (its runtime's variables, then the template's), with the
    ``layers`` on ``PYTHONPATH`` (the first wins) and ``overrides`` last."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(str(layer) for layer in layers),
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(function.timeout),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **function.environment,
        **overrides,
    }


@dataclass
class Invocation:
    """The result of one invocation: the payload, or the error Lambda would report."""

    payload: Any
    error: dict[str, Any] | None
    duration_ms: float


class _Emulator:
    """One RIE process serving one function."""

    def __init__(self, function: Function, python: Path, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        runtime_port = free_port()
        self._log = log.open("ab")
        self.process = spawn(
            [
                str(_rie_binary()),
                "--runtime-interface-emulator-address",
                f"127.0.0.1:{self.port}",
                "--runtime-api-address",
                f"127.0.0.1:{runtime_port}",
                str(python),
                "-m",
                "awslambdaric",
                function.handler,
            ],
            cwd=function.code_uri,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}/2015-03-31/functions/function/invocations"
        self.session = requests.Session()

    def invoke(self, event: Any, timeout: float) -> Invocation:
        started = time.monotonic()
        for attempt in range(50):  # the RIE needs a moment to bind its port
            try:
                reply = self.session.post(self.url, data=json.dumps(event), timeout=timeout)
                break
            except requests.ConnectionError:
                if attempt == 49 or self.process.poll() is not None:
                    raise
                time.sleep(0.1)
        duration = (time.monotonic() - started) * 1000
        try:
            payload = reply.json()
        except ValueError:
            payload = reply.text
        # The RIE answers a timeout with 200 and the plain text "Task timed out after 1.00 seconds",
        # init/exit errors with 502 and a JSON error, handler errors with 200 and a JSON error.
        if isinstance(payload, str) and payload.startswith("Task timed out"):
            return Invocation(None, {"errorType": "Sandbox.Timedout", "errorMessage": payload}, duration)
        if isinstance(payload, dict) and {"errorType", "errorMessage"} <= payload.keys() <= ERROR_KEYS:
            return Invocation(None, payload, duration)
        if reply.status_code != 200:
            return Invocation(None, {"errorType": "Runtime.Unknown", "errorMessage": str(payload)}, duration)
        return Invocation(payload, None, duration)

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


class FunctionHost:
    """Pools of emulator processes, one pool per function of the template."""

    def __init__(
        self,
        template: Template,
        *,
        python: Path,
        layer_dirs: list[Path],
        env_overrides: Mapping[str, str],
        logs: Path,
        max_pool: int = 3,
        call_log: Path | None = None,
        physical_names: Mapping[str, str] | None = None,
    ) -> None:
        """``call_log``: a directory where each function process records its AWS calls (``local.aws_calls``),
        with ``physical_names`` (physical name → logical id) naming the resources they touch."""
        self.template = template
        self._pools: dict[str, queue.Queue[_Emulator]] = {}
        self._emulators: list[_Emulator] = []
        logs.mkdir(parents=True, exist_ok=True)
        layer_by_id = {directory.parent.name: directory for directory in layer_dirs}
        recording: dict[str, str] = {}  # the call recorder's environment, when calls are recorded
        hook_path: list[Path] = []
        if call_log is not None:
            hook_path = [write_site_hook(call_log.parent / "site-hook")]
            recording = {
                "LOCAL_AWS_CALL_LOG": str(call_log),
                "LOCAL_AWS_CALL_NAMES": json.dumps(dict(physical_names or {})),
            }
        for function in template.functions.values():
            size = max(1, min(function.reserved_concurrency or 2, max_pool))
            # Only the function's own layers; Lambda extracts them into /opt in order, so a later layer's
            # files win. The call recorder's site hook, when calls are recorded, comes first.
            layers = [layer_by_id[layer] for layer in reversed(function.layers) if layer in layer_by_id]
            recorder = {"LOCAL_AWS_CALL_FUNCTION": function.logical_id} if recording else {}
            env = lambda_environment(function, [*hook_path, *layers], {**env_overrides, **recording, **recorder})
            pool: queue.Queue[_Emulator] = queue.Queue()
            for _ in range(size):
                emulator = _Emulator(function, python, env, logs / f"{function.logical_id}.log")
                self._emulators.append(emulator)
                pool.put(emulator)
            self._pools[function.logical_id] = pool

    def invoke(self, logical_id: str, event: Any) -> Invocation:
        """Run one invocation on a free emulator of the function (waits for one)."""
        function = self.template.functions[logical_id]
        emulator = self._pools[logical_id].get()
        try:
            return emulator.invoke(event, timeout=function.timeout + 5)
        except requests.RequestException as exc:
            return Invocation(None, {"errorType": "Runtime.Unavailable", "errorMessage": type(exc).__name__}, 0)
        finally:
            self._pools[logical_id].put(emulator)

    def warm(self, logical_id: str, event: Any) -> None:
        """Invoke every emulator of a function once with a harmless event, so Python is initialised."""
        emulators = [self._pools[logical_id].get() for _ in range(self._pools[logical_id].qsize())]
        threads = [threading.Thread(target=e.invoke, args=(event, 60)) for e in emulators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for emulator in emulators:
            self._pools[logical_id].put(emulator)

    def stop(self) -> None:
        """Stop every emulator process."""
        for emulator in self._emulators:
            emulator.stop()


@dataclass
class LambdaApi:
    """The Lambda Invoke API (``POST /2015-03-31/functions/{name}/invocations``) on loopback."""

    host: FunctionHost
    failures_file: Path
    failures: list[dict[str, Any]] = field(default_factory=list)
    invocations: list[tuple[str, str]] = field(default_factory=list)  # (function, invocation type)
    on_async_done: Callable[[str, Invocation], None] | None = None

    def __post_init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Any, str]] = queue.Queue()
        self._running = threading.Event()
        self._running.set()
        self._busy = 0
        self._idle = threading.Condition()
        self._server = serve(self._handler_class(), name="lambda-api")
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        for n in range(ASYNC_WORKERS):
            threading.Thread(target=self._work, daemon=True, name=f"lambda-async-{n}").start()

    def invoke_async(self, logical_id: str, event: Any) -> str:
        """Queue an ``Event`` invocation; returns its request id."""
        request_id = str(uuid.uuid4())
        with self._idle:
            self._busy += 1
        self.invocations.append((logical_id, "Event"))
        self._queue.put((logical_id, event, request_id))
        return request_id

    def hold(self) -> None:
        """Keep accepting ``Event`` invocations but run none until ``release`` — what Lambda's own queue
        looks like from the caller, with the work happening elsewhere (benchmarks use it)."""
        self._running.clear()

    def release(self) -> None:
        """Run held and new ``Event`` invocations again."""
        self._running.set()

    def wait_idle(self, timeout: float = 60) -> bool:
        """Wait until no asynchronous invocation is queued or running."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _work(self) -> None:
        while True:
            logical_id, event, request_id = self._queue.get()
            self._running.wait()
            try:
                self._run_with_retries(logical_id, event, request_id)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _run_with_retries(self, logical_id: str, event: Any, request_id: str) -> None:
        function = self.host.template.functions[logical_id]
        attempts = 1 + function.max_retry_attempts
        for attempt in range(1, attempts + 1):
            result = self.host.invoke(logical_id, event)
            if self.on_async_done:
                self.on_async_done(logical_id, result)
            if result.error is None:
                return
            if attempt < attempts:
                time.sleep(ASYNC_RETRY_DELAYS[min(attempt - 1, len(ASYNC_RETRY_DELAYS) - 1)])
        record = {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {
                "requestId": request_id,
                "functionArn": f"arn:aws:lambda:us-east-1:000000000000:function:{function.name}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": result.error,
        }
        self.failures.append(record)
        self.failures_file.parent.mkdir(parents=True, exist_ok=True)
        with self.failures_file.open("a") as out:
            out.write(json.dumps(record) + "\n")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(LoopbackHandler):
            def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
                self.send(status, [("Content-Type", "application/json"), *(headers or {}).items()], body)

            def do_POST(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if len(parts) != 4 or parts[:2] != ["2015-03-31", "functions"] or parts[3] != "invocations":
                    self._send(404, b'{"Type":"User","message":"Unknown operation"}')
                    return
                function = api.host.template.function_by_name(unquote(parts[2]))
                if function is None:
                    message = {"Type": "User", "message": f"Function not found: {parts[2]}"}
                    self._send(404, json.dumps(message).encode(), {"x-amzn-ErrorType": "ResourceNotFoundException"})
                    return
                try:
                    event = json.loads(raw) if raw else {}
                except ValueError:
                    self._send(
                        400,
                        b'{"Type":"User","message":"Could not parse request body into json"}',
                        {"x-amzn-ErrorType": "InvalidRequestContentException"},
                    )
                    return
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                if kind == "DryRun":
                    self._send(204, b"")
                elif kind == "Event":
                    request_id = api.invoke_async(function.logical_id, event)
                    self._send(202, b"", {"x-amzn-RequestId": request_id})
                else:
                    api.invocations.append((function.logical_id, "RequestResponse"))
                    result = api.host.invoke(function.logical_id, event)
                    if result.error is not None:
                        self._send(200, json.dumps(result.error).encode(), {"X-Amz-Function-Error": "Unhandled"})
                    else:
                        self._send(200, json.dumps(result.payload).encode())

        return Handler


def stop_quietly(*stoppables: Any) -> None:
    """Stop each component, ignoring errors (used on shutdown paths)."""
    for component in stoppables:
        with contextlib.suppress(Exception):
            component.stop()

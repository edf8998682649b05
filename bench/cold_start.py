"""Cold starts of the callback as Lambda runs them: the url_verification answer and the first event.

Every sample is a new container: a fresh runtime interface emulator (RIE) process running the
function's code under Lambda's own bootstrap (``awslambdaric``), in an interpreter with only what
Lambda's python3.13 runtime has, and the shared layer on ``PYTHONPATH`` as Lambda mounts it. Nothing is
warm: the code and the layer are read-only copies built by the layer's own recipe
(``layers/shared/Makefile``, with the host's wheels instead of arm64's) and ``PYTHONDONTWRITEBYTECODE``
is set, so the only bytecode is the one the deployed layer ships. The Feishu credentials come from a
Secrets Manager stand-in (``FEISHU_SECRET_ARN``, no ``FEISHU_APP_ID``); DynamoDB is DynamoDB Local; the
sync's asynchronous invoke goes to a Lambda API stand-in. The time is API Gateway's view: from sending
the invocation to the answer, so the runtime's start, the imports, the secret read and the handler (for
an event: the dedup record, the ping and the invoke) are all in it. Not in it: Lambda creating the
sandbox and fetching the code, which is the same for any Python function of this size.

Lambda runs the init phase at full speed but the handler at the function's share of a vCPU (about
0.3 at the template's 512 MB), so the RIE's init and the handler's time are reported apart, and
``*_at_512mb_bound_ms`` counts the handler's time as if it were all CPU work at that share.

Three builds are interleaved, run after run: ours; ours with the layer as SAM's python builder made it,
without bytecode (what the layer's recipe fixes); and the same callback built on lark-oapi's
``EventDispatcherHandler`` (``bench/lark_callback``), lark-oapi compiled like our layer.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import requests

from bench.common import Entry, machine_load, median, percentile, services
from feishu_mirror.config import Settings
from feishu_mirror.models import SealedGrant, UserIdentity
from local.api_gateway import build_event
from local.dynamodb_local import DynamoDBLocal, create_tables, free_port
from local.feishu_sim import FeishuSimulator
from local.http import LoopbackHandler, serve
from local.lambdas import _rie_binary, build_runtime, lambda_environment
from local.processes import spawn, terminate
from local.secrets_manager import SecretsManagerStandIn
from local.template import Route, load

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".local" / "cold"
RUNS = int(os.environ.get("COLD_START_RUNS", "15"))
SECRET_NAME = "feishu-calendar-mirror"  # noqa: S105 - the secret's name, not a secret
CHALLENGE_TARGET_MS = 1000  # Feishu's limit for the url_verification answer
EVENT_TARGET_MS = 3000  # Feishu's limit for any other push
FULL_VCPU_MB = 1769  # Lambda's memory size that buys one full vCPU
INIT_REPORT = re.compile(rb"INIT REPORT\(durationMs: ([0-9.]+)\)")


@dataclass(frozen=True)
class Build:
    """One way of building the callback: its code directory (``/var/task``), layers and handler."""

    name: str
    code: Path
    layers: tuple[Path, ...]
    handler: str = "app.handler"
    timeout_seconds: int | None = None  # instead of the template's, for a build whose init takes longer


@dataclass(frozen=True)
class Sample:
    """One cold invocation: the answer's time, the runtime's init and the handler's share of it, and the
    CPU time the container used (emulator and runtime), which other work on the machine does not inflate."""

    total_ms: float
    init_ms: float
    cpu_ms: float

    @property
    def handler_ms(self) -> float:
        """What is left of the answer's time once the runtime and the imports are done."""
        return self.total_ms - self.init_ms

    def at_memory_bound_ms(self, memory_mb: int) -> float:
        """An upper bound for Lambda at ``memory_mb``: init at full speed, the handler as if it were all CPU
        work at the function's share of a vCPU (1,769 MB buy a whole one)."""
        return self.init_ms + self.handler_ms * max(1.0, FULL_VCPU_MB / memory_mb)


# ------------------------------------------------------------------------------------ builds
def _make_writable(path: Path) -> None:
    for directory, _, files in os.walk(path):
        os.chmod(directory, 0o755)  # noqa: S103 - a build directory of our own, to be replaced
        for name in files:
            Path(directory, name).chmod(0o644)


def _make_read_only(path: Path) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            file = Path(directory, name)
            file.chmod(file.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        Path(directory).chmod(0o555)


def _fresh(path: Path) -> Path:
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _copy_code(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return target


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"{' '.join(command[:4])}… failed")


def build_all() -> list[Build]:
    """The three builds, read-only under ``.local/cold/``."""
    python = sys.executable
    root = _fresh(STATE)
    layer = root / "layer"
    _run("make", "-s", "-f", str(ROOT / "layers/shared/Makefile"), "build-SharedLayer", f"ARTIFACTS_DIR={layer}",
         "LAMBDA_WHEELS=", f"PYTHON={python}")  # fmt: skip
    plain = layer.parent / "layer-without-bytecode"
    shutil.copytree(layer, plain, ignore=shutil.ignore_patterns("__pycache__"))
    lark = root / "lark-layer" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--target",
         str(lark), f"lark-oapi=={version('lark-oapi')}")  # fmt: skip
    _run(python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "checked-hash", str(lark))
    ours = _copy_code(ROOT / "functions" / "callback", root / "function")
    theirs = _copy_code(ROOT / "bench" / "lark_callback", root / "lark-function")
    _make_read_only(root)
    return [
        Build("ours", ours, (layer / "python",)),
        Build("ours_without_layer_bytecode", ours, (plain / "python",)),
        # importing lark_oapi loads its ~10,000 API modules: seconds, past the callback's 10 s timeout
        # on a busy machine, so it gets more here (Lambda would time it out and retry the init).
        Build("lark_oapi", theirs, (layer / "python", lark), timeout_seconds=120),
    ]


# ------------------------------------------------------------------------------------ stand-ins
@contextmanager
def lambda_api_stand_in() -> Iterator[str]:
    """Accepts the sync's asynchronous invokes (202) and runs nothing: the syncs are not measured here."""

    class Handler(LoopbackHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send(202, [("x-amzn-RequestId", str(uuid.uuid4()))], b"")

    server = serve(Handler, name="lambda-api-stand-in")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------ invocations
def _api_gateway_event(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    return build_event(
        Route("POST", "/feishu/events", "CallbackFunction"),
        method="POST",
        raw_path="/feishu/events",
        raw_query="",
        headers=[("host", "abc.execute-api.us-east-1.amazonaws.com"), *headers.items()],
        body=body,
        source_ip="203.0.113.10",
        path_parameters={},
    )


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.002)
    raise RuntimeError("the runtime interface emulator did not start")


def cold_invoke(
    build: Build, python: Path, env: dict[str, str], event: dict[str, Any], log: Path
) -> tuple[Sample, Any]:
    """Start a new container of ``build``, send it ``event`` and return the time to its answer."""
    port, runtime_port = free_port(), free_port()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("wb") as out:
        process = spawn(
            [
                str(_rie_binary()),
                "--runtime-interface-emulator-address",
                f"127.0.0.1:{port}",
                "--runtime-api-address",
                f"127.0.0.1:{runtime_port}",
                str(python),
                "-m",
                "awslambdaric",
                build.handler,
            ],
            cwd=build.code,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_port(port, process)  # the RIE starts the runtime only when the first invocation comes
            url = f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"
            started = time.perf_counter()
            reply = requests.post(url, data=json.dumps(event), timeout=(build.timeout_seconds or 30) + 5)
            total_ms = (time.perf_counter() - started) * 1000
        finally:
            terminate(process)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the emulator reaps the runtime, we reap the emulator
    cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    init = INIT_REPORT.search(log.read_bytes())
    return Sample(total_ms, float(init.group(1)) if init else 0.0, cpu_ms), reply.json()


def _lambda_environment(build: Build, endpoints: dict[str, str], secret_arn: str) -> dict[str, str]:
    """What Lambda gives the callback of ``build``: the template's variables with the secret's ARN."""
    template = load(ROOT, prefix="cold-", parameters={"FeishuSecretArn": secret_arn})
    overrides = {**endpoints, "PYTHONDONTWRITEBYTECODE": "1"}
    if build.timeout_seconds:
        overrides["AWS_LAMBDA_FUNCTION_TIMEOUT"] = str(build.timeout_seconds)
    return lambda_environment(template.functions["CallbackFunction"], list(build.layers), overrides)


def cold_start() -> list[Entry]:
    """``RUNS`` rounds; in each, every build answers a challenge and a first event on new containers."""
    python, _ = build_runtime(load(ROOT), ROOT / ".local")
    builds = build_all()
    sim = FeishuSimulator(app_id="cli_cold")  # only builds Feishu-shaped requests; never started
    credentials = {
        "FEISHU_APP_ID": sim.app_id,
        "FEISHU_APP_SECRET": sim.app_secret,
        "FEISHU_ENCRYPT_KEY": sim.encrypt_key,
        "FEISHU_VERIFICATION_TOKEN": sim.verification_token,
    }
    samples: dict[tuple[str, str], list[Sample]] = {}
    with (
        DynamoDBLocal(ROOT / ".local" / "dynamodb") as dynamodb,
        SecretsManagerStandIn({SECRET_NAME: credentials}) as secrets,
        lambda_api_stand_in() as lambda_endpoint,
    ):
        client = dynamodb.client()
        template = load(ROOT, prefix="cold-")
        create_tables(client, template.tables, template.table_names)
        built = services(client, Settings(users_table=template.table_names["UsersTable"]))
        users, schedule = built.tables.tokens, built.tables.schedule
        endpoints = {
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb.endpoint,
            "AWS_ENDPOINT_URL_LAMBDA": lambda_endpoint,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets.endpoint,
        }
        envs = {build.name: _lambda_environment(build, endpoints, secrets.arn(SECRET_NAME)) for build in builds}
        for run in range(RUNS):
            for build in builds:
                env = envs[build.name]
                assert "FEISHU_APP_ID" not in env
                assert env["FEISHU_SECRET_ARN"]
                challenge = uuid.uuid4().hex
                payload = {"challenge": challenge, "token": sim.verification_token, "type": "url_verification"}
                headers, body = sim.build_callback_request(payload)
                headers = {k: v for k, v in headers.items() if not k.startswith("X-Lark-")}  # Feishu signs no challenge
                sample, reply = cold_invoke(build, python, env, _api_gateway_event(headers, body), STATE / "rie.log")
                assert reply["statusCode"] == 200, reply
                assert json.loads(reply["body"]) == {"challenge": challenge}, reply
                samples.setdefault((build.name, "challenge"), []).append(sample)

                open_id = f"ou_cold_{build.name}_{run}"  # a user whose sync is not pending yet: the whole ping path
                sim.add_user(open_id, open_id)
                now = int(time.time())
                # never opened: the callback only pings (stand-in bytes where OAuth stores sealed tokens)
                users.save_authorization(
                    UserIdentity(open_id, open_id), SealedGrant(b"at", now + 7200, b"rt", now + 604800), now
                )
                headers, body = sim.build_callback_request(sim.calendar_changed_payload([open_id]))
                sample, reply = cold_invoke(build, python, env, _api_gateway_event(headers, body), STATE / "rie.log")
                assert reply["statusCode"] == 200, reply
                user = schedule.get(open_id)
                assert user is not None
                assert user.pending_invoke_until > now, "the sync was not started"
                samples.setdefault((build.name, "first_event"), []).append(sample)
        assert secrets.requests >= RUNS * len(builds) * 2  # every container read the secret
    for directory in (*(build.code for build in builds), builds[1].layers[0]):  # nothing wrote bytecode
        assert not any(directory.rglob("*.pyc")), directory
    return _entries(samples, int(envs["ours"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]))


def _entries(samples: dict[tuple[str, str], list[Sample]], memory_mb: int) -> list[Entry]:
    entries: list[Entry] = []
    for kind, target in (("challenge", CHALLENGE_TARGET_MS), ("first_event", EVENT_TARGET_MS)):
        for build in ("ours", "ours_without_layer_bytecode", "lark_oapi"):
            runs = samples[(build, kind)]
            totals = [s.total_ms for s in runs]
            prefix = f"cold_{kind}" + ("" if build == "ours" else f"_{build}")
            entries += [
                Entry(f"{prefix}_ms", percentile(totals, 0.9), "ms", target=target if build == "ours" else None),
                Entry(f"{prefix}_median_ms", median(totals), "ms"),
                Entry(f"{prefix}_max_ms", max(totals), "ms"),
                Entry(f"{prefix}_cpu_median_ms", median([s.cpu_ms for s in runs]), "ms"),
            ]
            if build == "ours":
                bounds = [s.at_memory_bound_ms(memory_mb) for s in runs]
                entries += [
                    Entry(f"{prefix}_init_median_ms", median([s.init_ms for s in runs]), "ms"),
                    Entry(f"{prefix}_handler_median_ms", median([s.handler_ms for s in runs]), "ms"),
                    Entry(f"{prefix}_at_{memory_mb}mb_bound_ms", percentile(bounds, 0.9), "ms"),
                ]
        ours = median([s.total_ms for s in samples[("ours", kind)]])
        lark = median([s.total_ms for s in samples[("lark_oapi", kind)]])
        entries.append(Entry(f"cold_{kind}_ratio_vs_lark_oapi", ours / lark, "ratio", target=1.0))
    return [*entries, machine_load("cold_start_machine_load")]

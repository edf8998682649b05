"""Callback benchmarks: warm handling against lark-oapi, and cold start against a bare ``import boto3``."""

from __future__ import annotations

import json
import os
import subprocess
import time
import timeit
from pathlib import Path

from bench.common import Entry, median
from feishu_mirror.callback import CallbackVerifier
from local.feishu_sim import FeishuSimulator
from local.lambdas import build_runtime
from local.template import load

ROOT = Path(__file__).resolve().parent.parent


def warm_handling() -> list[Entry]:
    """Decrypt + verify + parse one signed, encrypted calendar change: ours vs lark-oapi's dispatcher."""
    import lark_oapi as lark  # noqa: PLC0415 - a benchmark-only dependency

    sim = FeishuSimulator(app_id="cli_bench")  # used only to build Feishu-shaped requests, never started
    payload = sim.calendar_changed_payload(["ou_bench"])
    payload["event"]["user_id_list"][0].update(union_id="on_bench", user_id="u_bench")
    headers, body = sim.build_callback_request(payload, timestamp=int(time.time()))
    ours = CallbackVerifier(
        encrypt_key=sim.encrypt_key or "", verification_token=sim.verification_token, app_id=sim.app_id
    )
    lower = {name.lower(): value for name, value in headers.items()}

    def handle_ours() -> None:
        ours.verify(lower, body)
        json.dumps({"msg": "success"})

    theirs = (
        lark.EventDispatcherHandler.builder(sim.encrypt_key or "", sim.verification_token, lark.LogLevel.ERROR)
        .register_p2_calendar_calendar_changed_v4(lambda _event: None)
        .build()
    )

    def handle_theirs() -> None:
        request = lark.RawRequest()
        request.uri = "/feishu/events"
        request.headers = dict(headers)
        request.body = body
        reply = theirs.do(request)
        assert reply.status_code == 200, reply.content

    handle_ours()
    handle_theirs()
    rounds = 2000
    ours_us = min(timeit.repeat(handle_ours, number=rounds, repeat=5)) / rounds * 1e6
    theirs_us = min(timeit.repeat(handle_theirs, number=rounds, repeat=5)) / rounds * 1e6
    return [
        Entry("callback_warm_ours", ours_us, "µs"),
        Entry("callback_warm_lark_oapi", theirs_us, "µs"),
        Entry("callback_warm_ratio_vs_lark_oapi", ours_us / theirs_us, "ratio", target=0.5),
    ]


def _import_seconds(code: str, cwd: Path, env: dict[str, str], runs: int) -> list[float]:
    python = ROOT / ".local" / "runtime-venv" / "bin" / "python"
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    return [
        float(
            subprocess.run(
                [str(python), "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(runs)
    ]


def cold_start(runs: int = 21) -> list[Entry]:
    """Importing the callback handler in a fresh interpreter (the Lambda runtime's packages + the layer)
    against a bare ``import boto3`` in the same interpreter, median of ``runs`` each, interleaved."""
    build_runtime(load(ROOT), ROOT / ".local")  # the Lambda-like interpreter and layer, as the local stack uses
    layer = ROOT / ".local" / "layers" / "SharedLayer" / "python"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(layer),
        "AWS_DEFAULT_REGION": "us-east-1",
        "USERS_TABLE": "users",
        "IDEMPOTENCY_TABLE": "idempotency",
        "SYNC_FUNCTION_NAME": "sync",
        "PYTHONDONTWRITEBYTECODE": "",
    }
    handler: list[float] = []
    floor: list[float] = []
    for _ in range(runs):  # interleaved, so machine noise hits both alike
        handler += _import_seconds("import app", ROOT / "functions" / "callback", env, 1)
        floor += _import_seconds("import boto3", ROOT / "functions" / "callback", env, 1)
    ours, bare = median(handler) * 1000, median(floor) * 1000
    return [
        Entry("cold_import_callback_handler", ours, "ms", floor=bare),
        Entry("cold_import_boto3", bare, "ms"),
        Entry("cold_import_ratio_vs_boto3", ours / bare, "ratio", target=1.3, floor=1.0),
    ]

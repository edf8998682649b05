"""Callback benchmark: warm handling against lark-oapi (cold starts: ``bench/cold_start.py``)."""

from __future__ import annotations

import json
import time
import timeit

from bench.common import Entry
from feishu_mirror.callback import CallbackVerifier
from local.feishu_sim import FeishuSimulator


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

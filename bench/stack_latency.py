"""Latency through the whole local stack: the callback's acknowledgement and event → mirror.

Deliveries are real encrypted, signed pushes sent to the local API front; each one runs the callback
function under the Lambda emulator, including the dedup write, the ping writes and the async invoke.
"""

from __future__ import annotations

import time

import requests

from bench.common import Entry, percentile, services, simulated_stack
from feishu_mirror.config import Settings
from feishu_mirror.models import TokenGrant, UserIdentity
from feishu_mirror.token_vault import KmsDataKeys
from local.feishu_sim import FeishuSimulator
from local.stack import LocalStack

DELIVERIES = 1000
USERS = 1000  # one delivery each: every acknowledgement includes the dedup write, the ping and the invoke
LATENCY_SAMPLES = 60


def _seed_users(stack: LocalStack, sim: FeishuSimulator, count: int) -> list[str]:
    assert stack.kms is not None
    keys = KmsDataKeys(stack.kms.client(), stack.key_arns["TokenKey"])
    built = services(stack.client(), Settings(users_table=stack.template.table_names["UsersTable"]), data_keys=keys)
    users, vault = built.tables.tokens, built.vault
    open_ids = []
    for n in range(count):
        open_id = f"ou_bench_{n}"
        sim.add_user(open_id, f"Bench {n}")
        sim.create_calendar(open_id, summary="Bench calendar")
        body = sim.issue_user_tokens(open_id)
        now = int(time.time())
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        users.save_authorization(UserIdentity(open_id, f"Bench {n}"), vault.seal(open_id, grant), now)
        open_ids.append(open_id)
    return open_ids


def _mirrored(stack: LocalStack, open_id: str, calendar_id: str) -> bool:
    item = stack.client().get_item(
        TableName=stack.template.table_names["CalendarsTable"],
        Key={"open_id": {"S": open_id}, "calendar_id": {"S": calendar_id}},
        ConsistentRead=True,
    )
    return "Item" in item


def stack_latency() -> list[Entry]:
    """Event → mirror latency first (quiet machine), then acknowledgement latency under load."""
    with simulated_stack() as (stack, sim):
        url = f"{stack.api_url}/feishu/events"
        open_ids = _seed_users(stack, sim, USERS)
        for open_id in open_ids[:5]:  # first syncs, so later ones are incremental
            sim.push_calendar_changed([open_id], callback_url=url)
        stack.wait_idle(120)

        lags: list[float] = []
        for n in range(LATENCY_SAMPLES):
            open_id = open_ids[n % 5]
            calendar_id = sim.create_calendar(open_id, summary=f"latency {n}")
            started = time.perf_counter()
            assert sim.push_calendar_changed([open_id], callback_url=url).status_code == 200
            while not _mirrored(stack, open_id, calendar_id):
                if time.perf_counter() - started > 30:
                    raise RuntimeError("change never reached the mirror")
                time.sleep(0.005)
            lags.append(time.perf_counter() - started)
            stack.wait_idle(30)

        # Lambda's async queue answers at once and the syncs run on other machines: hold the local
        # queue while measuring so the 2-core laptop is not also running 1,000 syncs meanwhile.
        assert stack.lambda_api is not None
        stack.lambda_api.hold()
        session = requests.Session()
        acks: list[float] = []
        started_syncs = 0
        for n in range(DELIVERIES):
            payload = sim.calendar_changed_payload([open_ids[n % USERS]])
            headers, body = sim.build_callback_request(payload)
            started = time.perf_counter()
            reply = session.post(url, data=body, headers=headers, timeout=30)
            acks.append(time.perf_counter() - started)
            assert reply.status_code == 200, reply.text
            started_syncs += reply.json().get("started", 0)
        stack.lambda_api.release()
        stack.wait_idle(300)
    return [
        Entry("event_to_mirror_p50", percentile(lags, 0.5) * 1000, "ms"),
        Entry("event_to_mirror_p95", percentile(lags, 0.95) * 1000, "ms", target=2000),
        Entry("callback_ack_p50", percentile(acks, 0.5) * 1000, "ms"),
        Entry("callback_ack_p99", percentile(acks, 0.99) * 1000, "ms", target=50),
        Entry("callback_ack_deliveries", len(acks), "deliveries", target=1000, better="higher"),
        Entry("callback_ack_syncs_invoked", started_syncs, "invokes"),
    ]

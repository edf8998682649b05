"""The sync handler (functions/sync/app.py) with the engine stubbed: what it reads from a direct
invocation and from a replayed on-failure record, and what it logs and measures with it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from feishu_mirror.models import SyncResult
from feishu_mirror.observability import logger, metrics
from tests.lambda_handlers import FakeContext, handler_module

# The stand-in engine emits no metric, so Powertools warns that there is none to publish.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")


@dataclass
class FakeEngine:
    """Stands in for ``CalendarSync``: records each user synced and the log keys in force meanwhile."""

    synced: list[str] = field(default_factory=list)
    log_keys: list[dict[str, Any]] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)

    def sync_user(self, open_id: str, *, owner: str, **_kwargs: Any) -> SyncResult:
        self.synced.append(open_id)
        self.owners.append(owner)
        self.log_keys.append(dict(logger.get_current_keys()))
        return SyncResult(open_id, "synced", upserted=1)


@dataclass
class Lags:
    """Stands in for ``record_push_to_mirror_lag``: records the user of each result it is given."""

    users: list[str] = field(default_factory=list)

    def __call__(self, result: SyncResult, *, now: float) -> None:
        self.users.append(result.open_id)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The handler module, imported fresh with its settings, credentials from the environment."""
    env = {
        "USERS_TABLE": "users",
        "CALENDARS_TABLE": "calendars",
        "RATE_LIMIT_TABLE": "rate",
        "TOKEN_KEY_ID": "arn:aws:kms:us-east-1:000000000000:key/test",
        "FEISHU_APP_ID": "cli_test",
        "FEISHU_APP_SECRET": "secret",
    }
    metrics.clear_metrics()
    with handler_module("sync", monkeypatch, env) as module:
        yield module
    metrics.clear_metrics()


def invoke(app: ModuleType, monkeypatch: pytest.MonkeyPatch, event: Any) -> tuple[Any, FakeEngine, Lags]:
    engine, lags = FakeEngine(), Lags()
    monkeypatch.setattr(app, "calendar_sync", lambda _credentials: engine)
    monkeypatch.setattr(app, "record_push_to_mirror_lag", lags)
    return app.handler(event, FakeContext("sync", remaining_ms=60_000)), engine, lags


PUSHED = {"open_id": "ou_a", "reason": "event_changed", "delivery_id": "evt-1"}


def test_a_direct_invocation_logs_and_measures_with_its_reason_and_delivery_id(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the request the callback sends WHEN the sync function is invoked with it
    reply, engine, lags = invoke(app, monkeypatch, dict(PUSHED))
    # THEN the user is synced, the logs carry the reason and the push's delivery_id, and the lag is measured
    assert reply["outcome"] == "synced"
    assert engine.synced == ["ou_a"]
    keys = engine.log_keys[0]
    assert (keys["open_id"], keys["reason"], keys["delivery_id"]) == ("ou_a", "event_changed", "evt-1")
    assert "replay_of" not in keys
    assert lags.users == ["ou_a"]


def test_a_replayed_failure_record_keeps_the_reason_and_delivery_id_of_the_original_request(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the on-failure destination record of that request, as Lambda writes it to the failure queue
    record = {
        "version": "1.0",
        "requestContext": {"requestId": "failed-request", "condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": dict(PUSHED),
        "responsePayload": {"errorMessage": "boom"},
    }
    # WHEN it is replayed as it is
    reply, engine, lags = invoke(app, monkeypatch, record)
    # THEN every field comes from the original request: the logs and the lag metric see the push
    assert reply["outcome"] == "synced"
    assert engine.synced == ["ou_a"]
    keys = engine.log_keys[0]
    assert (keys["open_id"], keys["reason"], keys["delivery_id"]) == ("ou_a", "event_changed", "evt-1")
    assert keys["replay_of"] == "failed-request"
    assert lags.users == ["ou_a"]


def test_a_failure_record_queued_before_the_delivery_id_had_its_name_still_logs_it(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a failure record whose request names the push's delivery id the old way ("event_id")
    legacy = {"open_id": "ou_a", "reason": "event_changed", "event_id": "evt-old"}
    record = {"requestContext": {"requestId": "failed-request"}, "requestPayload": legacy}
    # WHEN it is replayed THEN the sync's logs carry it under its name
    reply, engine, _lags = invoke(app, monkeypatch, record)
    assert reply["outcome"] == "synced"
    assert engine.log_keys[0]["delivery_id"] == "evt-old"
    assert "event_id" not in engine.log_keys[0]


@pytest.mark.parametrize("open_id", ["", "ou a", "ou_\u00e9", "ou/1", "x" * 129, 7, None])
def test_a_request_whose_open_id_is_not_one_is_refused(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch, open_id: Any
) -> None:
    # GIVEN a request naming something that is no open_id (the rule every door of the mirror applies)
    reply, engine, lags = invoke(app, monkeypatch, {"open_id": open_id, "reason": "resync"})
    # THEN nothing is synced
    assert reply["outcome"] == "invalid_request"
    assert (engine.synced, lags.users) == ([], [])


def test_a_record_whose_payload_is_not_a_request_is_refused(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a record whose payload names no user (the outer event's fields must not stand in for it)
    record = {"open_id": "ou_outer", "reason": "event_changed", "requestPayload": {"reason": "resync"}}
    # WHEN it is invoked THEN nothing is synced
    reply, engine, lags = invoke(app, monkeypatch, record)
    assert reply["outcome"] == "invalid_request"
    assert (engine.synced, lags.users) == ([], [])


def test_two_copies_of_one_event_sync_under_two_lease_owners(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN one asynchronous event that Lambda delivers twice, both copies with the same request id
    engine = FakeEngine()
    monkeypatch.setattr(app, "calendar_sync", lambda _credentials: engine)
    monkeypatch.setattr(app, "record_push_to_mirror_lag", Lags())
    # WHEN both copies run
    for _ in range(2):
        app.handler(dict(PUSHED), FakeContext("sync", remaining_ms=60_000, aws_request_id="same-request"))
    # THEN each claims the user's lease as an owner of its own (so only one can hold it), both named
    # after the request for the logs
    first, second = engine.owners
    assert first != second
    assert first.startswith("same-request/")
    assert second.startswith("same-request/")

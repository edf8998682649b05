"""A sync lists its calendars' events side by side (bounded), in virtual time: at Feishu's answer times a
user with many calendars is mirrored at the pace of the rate limits, not of one call after another; the
listings share one token pair, refreshed once when Feishu rejects it under all of them."""

from __future__ import annotations

from typing import cast

from feishu_mirror.concurrency import Concurrency
from local.virtual_time import VirtualTime
from tests.fakes import FakeClock, FakeWorld

ANSWER_SECONDS = 0.2
CALENDARS = 40


class _VirtualClock(FakeClock):
    """``FakeClock``'s interface over virtual time (deadlines, waits and answers pass in it)."""

    def __init__(self, clock: VirtualTime) -> None:
        super().__init__(clock.time())
        self._virtual = clock

    def __call__(self) -> float:
        return self._virtual.time()

    def monotonic(self) -> float:
        return self._virtual.monotonic()

    def sleep(self, seconds: float) -> None:
        self._virtual.sleep(seconds)


def _world() -> tuple[VirtualTime, FakeWorld, str]:
    clock = VirtualTime()
    world = FakeWorld(clock=_VirtualClock(clock), concurrency=cast("Concurrency", clock))
    open_id = world.onboard("ou_many")
    for n in range(CALENDARS - 1):
        calendar_id = world.feishu.put_calendar(open_id, f"team-{n:02d}")
        world.feishu.put_event(open_id, calendar_id, f"ev-{n:02d}_0", summary="standup")
    world.feishu.answer_seconds = ANSWER_SECONDS
    return clock, world, open_id


def test_event_listings_run_side_by_side() -> None:
    # GIVEN a user with 40 readable calendars and Feishu answering each call in 200 ms
    clock, world, open_id = _world()
    # WHEN the user is synced
    sync = clock.spawn(lambda: world.sync(open_id))
    clock.run()
    # THEN every calendar's events are mirrored, in about a worker's share of the calls' time: 40 listings
    # and 40 subscriptions one after another would take 16 s
    assert sync.result.outcome == "synced"
    assert all(world.live_events(open_id, f"team-{n:02d}") == {f"ev-{n:02d}_0"} for n in range(CALENDARS - 1))
    sequential = 2 * CALENDARS * ANSWER_SECONDS
    assert clock.now < sequential / 4


def test_a_token_rejected_under_every_listing_is_refreshed_once() -> None:
    # GIVEN the user's access token stops working just as the event listings start side by side
    clock, world, open_id = _world()

    expired: list[bool] = []

    def expire_at_first_listing(method: str) -> None:
        if method == "list_events" and not expired:
            expired.append(True)
            world.feishu.expire_access_token(open_id)

    world.feishu.before_call = expire_at_first_listing
    # WHEN the user is synced
    sync = clock.spawn(lambda: world.sync(open_id))
    clock.run()
    # THEN one refresh served every listing (the refresh token is single-use: a second would have been
    # refused and the user asked to authorise again), and the user is mirrored
    assert world.feishu.calls.count("refresh_access_token") == 1
    assert sync.result.outcome == "synced"
    assert world.live_events(open_id, "team-00") == {"ev-00_0"}

"""The fleet's population: who has which calendars, and how many events each holds — seeded, so every run
of the fleet benchmark sees the same world.

- **Users**: 10,000 by default. Calendars per user (their whole calendar list) are long-tailed: 86 % have
  3–10, 12 % 11–30, 2 % 31–150, and 5 users 1,000.
- **Org-wide calendars** that many users subscribe to (``ORG_CALENDARS``): company holidays, all-hands,
  department and office calendars, a boardroom's bookings. A subscriber sees them with their own role;
  the boardroom is free/busy only for all but a few (Feishu lists no events then).
- **Personal and team calendars** fill the rest of each list: 20 % of them free/busy only and 5 %
  third-party (Google, Exchange: no events through Feishu), the others readable.
- **Events per calendar** are long-tailed too (log-normal): a primary calendar's median is 24 events, any
  other's 6, both capped at 5,000, and 10 team calendars hold 5,000 (an on-call rota's years). Events look
  like Feishu's list API returns them (vchat, reminders, organizer, app link; a weekly series here and
  there), about 1 KB each as the mirror stores them.

Event ids are ``<calendar tag><index>_0`` and fields a pure function of (calendar, index), so the Feishu
simulator makes them on demand (``local.feishu_sim.EventSource``) instead of holding millions of them.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from local.feishu_sim import FeishuSimulator

USERS = 10_000
FIRST_EVENT_AT = 1_709_251_200  # 2024-03-01: two years of history before the fleet's epoch
EVENT_SPAN_SECONDS = 2 * 365 * 86400 + 180 * 86400  # to six months after it
MAX_EVENTS = 5_000


@dataclass(frozen=True, slots=True)
class OrgCalendar:
    """An org-wide calendar: what fraction of users have it in their list, and with which role."""

    tag: str
    summary: str
    events: int
    subscribed: float
    readable: float = 1.0  # of the subscribers, the fraction that may read events (others: free/busy)
    type: str = "shared"

    @property
    def calendar_id(self) -> str:
        """Its Feishu calendar id (the same in every subscriber's list)."""
        return f"feishu.cn_org_{self.tag}@group.calendar.feishu.cn"


ORG_CALENDARS = (
    OrgCalendar("holidays", "Company holidays", 30, 0.85),
    OrgCalendar("allhands", "All hands", 20, 0.60),
    OrgCalendar("office", "Office events", 40, 0.25),
    OrgCalendar("eng", "Engineering", 60, 0.12),
    OrgCalendar("sales", "Sales", 60, 0.10),
    OrgCalendar("ops", "Operations", 60, 0.08),
    OrgCalendar("product", "Product", 60, 0.08),
    OrgCalendar("boardroom", "Boardroom", 4_000, 0.20, readable=0.01, type="resource"),
)


@dataclass(frozen=True, slots=True)
class CalendarSpec:
    """One calendar in one user's list: its own (``events`` > 0 or none) or an org-wide one."""

    calendar_id: str
    type: str
    role: str
    events: int = 0
    org: OrgCalendar | None = None

    @property
    def readable(self) -> bool:
        """Whether Feishu lists its events to this user (the mirror's ``has_readable_events``)."""
        return self.type in ("primary", "shared", "resource") and self.role in ("reader", "writer", "owner")


@dataclass(frozen=True, slots=True)
class UserSpec:
    """One user: the open_id and every calendar of their list, the primary first."""

    open_id: str
    calendars: tuple[CalendarSpec, ...]

    @property
    def readable(self) -> tuple[CalendarSpec, ...]:
        """The calendars whose events the mirror lists."""
        return tuple(c for c in self.calendars if c.readable)


class GeneratedEvents:
    """The events of one calendar, made on demand (a ``local.feishu_sim.EventSource``)."""

    def __init__(self, tag: str, count: int, organizer: str) -> None:
        self.tag = tag
        self.count = count
        self._organizer = organizer
        self._seed = zlib.crc32(tag.encode())

    def event_id(self, index: int) -> str:
        """``<tag>x<index>_0``: a Feishu-shaped id (``<uid>_0``) that maps back to its index."""
        return f"{self.tag}x{index:05d}_0"

    def index(self, event_id: str) -> int | None:
        """The index of one of this calendar's generated ids, else None."""
        prefix = f"{self.tag}x"
        if not (event_id.startswith(prefix) and event_id.endswith("_0")):
            return None
        digits = event_id[len(prefix) : -2]
        if len(digits) != 5 or not digits.isdigit():
            return None
        index = int(digits)
        return index if index < self.count else None

    def fields(self, index: int) -> dict[str, Any]:
        """Event ``index`` as Feishu's event list returns it (the simulator adds the id, organizer
        calendar and creation time)."""
        rng = random.Random(self._seed * 100_003 + index)
        start = FIRST_EVENT_AT + rng.randrange(EVENT_SPAN_SECONDS // 1800) * 1800
        length = rng.choice((1800, 1800, 3600, 3600, 3600, 5400, 7200))
        event_id = self.event_id(index)
        fields: dict[str, Any] = {
            "summary": f"{rng.choice(SUBJECTS)} #{index}",
            "description": rng.choice(DESCRIPTIONS),
            "start_time": {"timestamp": str(start), "timezone": "Asia/Shanghai"},
            "end_time": {"timestamp": str(start + length), "timezone": "Asia/Shanghai"},
            "vchat": {"vc_type": "vc", "meeting_url": f"https://vc.feishu.cn/j/{rng.randrange(10**9):09d}"},
            "visibility": "default",
            "attendee_ability": "can_see_others",
            "free_busy_status": "busy",
            "location": {"name": rng.choice(ROOMS)},
            "color": -1,
            "reminders": [{"minutes": 5}],
            "recurrence": "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO" if rng.random() < 0.05 else "",
            "status": "confirmed",
            "is_exception": False,
            "recurring_event_id": "",
            "event_organizer": {"user_id": self._organizer, "display_name": "Organizer"},
            "app_link": f"https://applink.feishu.cn/client/calendar/event/detail?calendarId={self.tag}&key={event_id}&originalTime=0&startTime={start}",
        }
        return fields


SUBJECTS = ("Weekly sync", "1:1", "Design review", "Planning", "Customer call", "Interview", "Retro", "Demo")
DESCRIPTIONS = ("", "", "", "Agenda in the doc.", "Notes: https://example.feishu.cn/docx/AbCdEfGhIjKlMnOpQrStUv")
ROOMS = ("", "", "F3-Orion", "F5-Vega", "F2-Lyra", "Online")


@dataclass
class Population:
    """The users, the org-wide calendars and each calendar's generated events."""

    users: list[UserSpec]
    org_calendars: tuple[OrgCalendar, ...]
    sources: dict[str, GeneratedEvents] = field(default_factory=dict)  # calendar_id → its events

    def load_into(self, sim: FeishuSimulator, *, owner: str = "ou_org_admin") -> None:
        """Create the world in the simulator: the org's calendars (owned by ``owner``), then every user."""
        sim.add_user(owner, "Org admin", primary_calendar_id=f"feishu.cn_primary_{owner}@group.calendar.feishu.cn")
        for org in self.org_calendars:
            sim.create_calendar(owner, calendar_id=org.calendar_id, summary=org.summary, type=org.type, role="owner")
            sim.add_generated_events(owner, org.calendar_id, self.sources[org.calendar_id])
        for user in self.users:
            self.load_user(sim, user, owner=owner)

    def load_user(self, sim: FeishuSimulator, user: UserSpec, *, owner: str = "ou_org_admin") -> None:
        """Create one user and their calendars in the simulator."""
        primary = user.calendars[0]
        sim.add_user(user.open_id, user.open_id, primary_calendar_id=primary.calendar_id)
        for calendar in user.calendars:
            if calendar.org is not None:
                sim.share_calendar(owner, calendar.calendar_id, user.open_id, role=calendar.role)
                continue
            if calendar is not primary:
                sim.create_calendar(
                    user.open_id, calendar_id=calendar.calendar_id, type=calendar.type, role=calendar.role
                )
            if calendar.events:
                sim.add_generated_events(user.open_id, calendar.calendar_id, self.sources[calendar.calendar_id])

    def stats(self) -> dict[str, float]:
        """The population's shape, for the README and the results file."""
        calendars = [len(u.calendars) for u in self.users]
        readable = [c for u in self.users for c in u.readable]
        org_items = sum(c.org.events for c in readable if c.org is not None)
        own_items = sum(c.events for c in readable if c.org is None)
        return {
            "users": len(self.users),
            "calendars": sum(calendars),
            "readable_calendars": len(readable),
            "calendars_per_user_median": sorted(calendars)[len(calendars) // 2],
            "calendars_per_user_max": max(calendars),
            "event_items": own_items + org_items,
            "org_event_items": org_items,
            "unique_events": own_items + sum(o.events for o in self.org_calendars),
        }


def _calendar_count(rng: random.Random) -> int:
    draw = rng.random()
    if draw < 0.86:
        return rng.choice((3, 4, 4, 5, 5, 5, 6, 6, 7, 8, 9, 10))
    if draw < 0.98:
        return rng.randint(11, 30)
    return rng.randint(31, 150)


def _events(rng: random.Random, median: float) -> int:
    return min(MAX_EVENTS, max(0, round(math.exp(rng.gauss(math.log(median), 1.1)))))


def make_population(users: int = USERS, *, seed: int = 16, big_users: int = 5, heavy_calendars: int = 10) -> Population:
    """The seeded population (see the module docstring); ``big_users`` of them have 1,000 calendars."""
    rng = random.Random(seed)
    sources: dict[str, GeneratedEvents] = {}
    for org in ORG_CALENDARS:
        sources[org.calendar_id] = GeneratedEvents(f"org{org.tag}", org.events, "ou_org_admin")
    big = set(rng.sample(range(users), big_users)) if big_users else set()
    heavy_left = heavy_calendars
    specs: list[UserSpec] = []
    for n in range(users):
        open_id = f"ou_fleet_{n:05d}"
        total = 1000 if n in big else _calendar_count(rng)
        primary_id = f"feishu.cn_primary_{n:05d}@group.calendar.feishu.cn"
        sources[primary_id] = GeneratedEvents(f"u{n:05d}p", _events(rng, 24), open_id)
        calendars = [CalendarSpec(primary_id, "primary", "owner", sources[primary_id].count)]
        for org in ORG_CALENDARS:
            if len(calendars) < total and rng.random() < org.subscribed:
                role = "reader" if rng.random() < org.readable else "free_busy_reader"
                calendars.append(CalendarSpec(org.calendar_id, org.type, role, org=org))
        for k in range(total - len(calendars)):
            calendar_id = f"feishu.cn_u{n:05d}c{k:04d}@group.calendar.feishu.cn"
            draw = rng.random()
            kind, role = (
                ("google", "reader")
                if draw < 0.05
                else ("shared", "free_busy_reader" if draw < 0.25 else rng.choice(("reader", "writer", "owner")))
            )
            count = 0
            if kind == "shared" and role != "free_busy_reader":
                count = (
                    MAX_EVENTS
                    if heavy_left and n not in big and rng.random() < 0.002
                    else _events(rng, 3 if n in big else 6)
                )
                heavy_left -= count == MAX_EVENTS
                sources[calendar_id] = GeneratedEvents(f"u{n:05d}c{k:04d}", count, open_id)
            calendars.append(CalendarSpec(calendar_id, kind, role, count))
        specs.append(UserSpec(open_id, tuple(calendars)))
    return Population(specs, ORG_CALENDARS, sources)


def big_users_joining(count: int, calendars: int = 1000, *, seed: int = 1016) -> Population:
    """``count`` users who sign in together, each with ``calendars`` readable calendars of a few events."""
    rng = random.Random(seed)
    sources: dict[str, GeneratedEvents] = {}
    specs = []
    for n in range(count):
        open_id = f"ou_big_{n:02d}"
        cals = []
        for k in range(calendars):
            calendar_id = f"feishu.cn_big{n:02d}c{k:04d}@group.calendar.feishu.cn"
            sources[calendar_id] = GeneratedEvents(f"b{n:02d}c{k:04d}", rng.randint(1, 12), open_id)
            cals.append(
                CalendarSpec(
                    calendar_id,
                    "primary" if k == 0 else "shared",
                    "owner" if k == 0 else "reader",
                    sources[calendar_id].count,
                )
            )
        specs.append(UserSpec(open_id, tuple(cals)))
    return Population(specs, (), sources)


def readable_calendars(population: Population) -> Iterator[tuple[UserSpec, CalendarSpec]]:
    """Every (user, readable calendar) pair."""
    for user in population.users:
        for calendar in user.readable:
            yield user, calendar

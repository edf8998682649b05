"""Feishu's identifiers: what each may be, checked by one rule in one place.

- An **open_id** names a user (``ou_`` and 32 hex digits in practice): letters, digits, ``_`` and ``-``,
  at most ``MAX_OPEN_ID_LENGTH``. Every door checks it the same way (the callback, the sync request, the
  OAuth identity, the status and read routes), so a user the mirror accepts is one every page can show.
- A **delivery id** is Feishu's ``header.event_id``: the id of one push (a delivery of a subscribed event,
  retried under the same id), which the callback deduplicates on. It is not a calendar event's id.
- A **calendar_id** and an **event_id** (a calendar event, 日程) are parts of DynamoDB keys, so they are
  bounded in bytes of UTF-8 (a partition key holds 2048 bytes, a sort key 1024).

The checks are ``TypeGuard``s, not ``TypeIs``: a string can fail them.
"""

from __future__ import annotations

import re
from typing import TypeGuard

MAX_OPEN_ID_LENGTH = 128
MAX_DELIVERY_ID_LENGTH = 128
MAX_CALENDAR_ID_BYTES = 512
MAX_EVENT_ID_BYTES = 512
_OPEN_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{MAX_OPEN_ID_LENGTH}}}")


def is_open_id(value: object) -> TypeGuard[str]:
    """True for a string that can be an open_id (letters, digits, ``_``/``-``, 1 to 128 of them)."""
    return isinstance(value, str) and _OPEN_ID.fullmatch(value) is not None


def is_delivery_id(value: object) -> TypeGuard[str]:
    """True for a non-empty, bounded, printable string: no NUL, control character or lone surrogate (from a
    JSON ``\\ud800`` escape), which DynamoDB would refuse or which would break the JSON log line it lands in."""
    return isinstance(value, str) and 0 < len(value) <= MAX_DELIVERY_ID_LENGTH and value.isprintable()


def fits_key(value: object, max_bytes: int) -> TypeGuard[str]:
    """True for a Feishu id the mirror can key an item by: a non-empty string of at most ``max_bytes`` of UTF-8."""
    if not isinstance(value, str) or not value:
        return False
    try:
        return len(value.encode("utf-8")) <= max_bytes
    except UnicodeEncodeError:  # a lone surrogate: no valid key
        return False


def is_calendar_id(value: object) -> TypeGuard[str]:
    """True for a calendar_id the mirror can key items by."""
    return fits_key(value, MAX_CALENDAR_ID_BYTES)


def is_event_id(value: object) -> TypeGuard[str]:
    """True for a calendar event's event_id the mirror can key an item by."""
    return fits_key(value, MAX_EVENT_ID_BYTES)

"""The status routes' HTTP edge: query parameters, content negotiation and the origin of a request.

``wants_json`` decides between the JSON and the HTML answer from ``Accept`` (or ``?format=``),
``page_size`` reads ``?limit=``, ``cross_site`` refuses a state-changing request from another site's
page, and ``overview_href`` makes the overview's address relative to the request's path. The service
(``status``) returns data; the pages (``status_pages``) are rendered apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from feishu_mirror.status import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, StatusRequestInvalid


def page_size(raw: str | None) -> int:
    """The ``limit`` query parameter: 1 to ``MAX_PAGE_SIZE``, ``DEFAULT_PAGE_SIZE`` when absent."""
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise StatusRequestInvalid(f"limit must be a number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def wants_json(accept: str | None, fmt: str | None = None) -> bool:
    """True when the client prefers JSON: ``?format=json``, or ``Accept`` ranks it above HTML.

    A browser (``text/html`` first), ``*/*`` and no header at all get HTML; ``application/json``
    alone or with a higher q-value than HTML gets JSON.
    """
    if fmt in ("json", "html"):
        return fmt == "json"
    html_q = json_q = 0.0
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media == "application/json":
            json_q = max(json_q, q)
        elif media == "text/html":
            html_q = max(html_q, q)
    return json_q > html_q


# Fetch metadata a browser sends with a request its user's page made to this same origin, or one the user
# started themselves (typed, bookmarked); anything else (``same-site``: another port of localhost or a
# sibling subdomain; ``cross-site``) is a page elsewhere trying to use the operator's credentials.
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})


def cross_site(headers: Mapping[str, str]) -> bool:
    """True when a state-changing request (the resync post) comes from another site's page; refuse it.

    ``headers`` have lowercase names (API Gateway's). A browser's ``Sec-Fetch-Site`` decides when it is
    there: it is computed against the address the browser actually posted to, so it stays right behind a
    SigV4-signing proxy on the operator's machine, which rewrites ``Host`` to the execute-api domain while
    ``Origin`` stays ``http://localhost:PORT``. Without it (an older browser, or a page served over plain
    HTTP from another machine), ``Origin`` must name the host the request was sent to:
    ``X-Forwarded-Host`` (its first entry) when a proxy sets it, else ``Host``. ``Origin: null`` (a
    sandboxed frame, a ``data:`` page, a cross-origin redirect) is always refused; the pages' referrer
    policy (``same-origin``) makes the browser send their real origin. No ``Origin`` and no fetch
    metadata is not a browser's cross-site form (curl, awscurl, ``make resync``): allowed, since the
    route's IAM authorisation already stands in front of it.
    """
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower() == "null":
        return True
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in SAME_ORIGIN_FETCH_SITES
    if origin is None:
        return False
    target = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip().lower()
    try:
        sent_from = urlsplit(origin.strip()).netloc.lower()
    except ValueError:  # a malformed Origin (e.g. an unbalanced "[") names no host we serve
        return True
    return not target or sent_from != target


def overview_href(path: str) -> str:
    """The overview's address relative to the request's ``path`` (``status`` from ``/status``,
    ``../status`` from ``/status/<id>``, ``../../status`` from ``/status/<id>/resync``): relative, so it
    also works under a custom domain's base path and behind a proxy."""
    segments = path.split("/")[1:]
    below = len(segments) - 1 - segments.index("status") if "status" in segments else max(len(segments) - 1, 0)
    return "../" * below + "status"

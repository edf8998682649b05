"""End to end for operators: the status pages in headless Chromium and as JSON, the resync route
(and ``make resync``), and one Feishu event followed from the push to the write through the logs.

The browser is Debian's Chromium driven by Selenium through Debian's ChromeDriver; ``make e2e``
installs both first (``make browser``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from feishu_mirror.dynamodb.values import plain
from feishu_mirror.models import CALENDAR_FIELDS
from feishu_mirror.status_pages import AUTO_REFRESH_SECONDS
from local.feishu_sim import CALENDARS_PATH, FeishuSimulator, feishu_error
from local.run import DEMO_USER, WARM_EVENTS
from local.stack import ROOT, LocalStack
from tests.e2e.conftest import assert_no_plaintext_token

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
# No background traffic: this machine's network is closed, and the test needs none of it.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def sim() -> Iterator[FeishuSimulator]:
    with FeishuSimulator(app_id="cli_e2e_status", push_retry_delays=(0.5, 1.0)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def stack(sim: FeishuSimulator, aws_calls: Path) -> Iterator[LocalStack]:
    with LocalStack(sim.app_environment(), prefix="e2e-status-", record_calls=aws_calls) as running:
        running.warm(WARM_EVENTS)
        sim.set_callback_url(f"{running.api_url}/feishu/events", auto_push=False)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: run `make browser` (Debian's chromium, chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="status-page-chromium-") as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def onboard(stack: LocalStack, sim: FeishuSimulator, open_id: str, name: str, summaries: tuple[str, ...]) -> None:
    """The user signs in through the real OAuth redirects; the first full sync finishes."""
    sim.add_user(open_id, name)
    for summary in summaries:
        sim.create_calendar(open_id, summary=summary, role="reader")
    sim.set_consent_user(open_id)
    page = requests.get(f"{stack.api_url}/oauth/start", timeout=30)
    assert page.status_code == 200, page.text
    assert stack.wait_idle(60)


def truth(sim: FeishuSimulator, open_id: str) -> dict[str, dict[str, Any]]:
    return {c["calendar_id"]: {k: v for k, v in c.items() if k in CALENDAR_FIELDS} for c in sim.calendars(open_id)}


def stored_secrets(stack: LocalStack, sim: FeishuSimulator) -> list[str]:
    """Every sync token in the users table and every user token Feishu issued."""
    users = stack.client().scan(TableName=stack.template.table_names["UsersTable"])["Items"]
    return [str(plain(u)["sync_token"]) for u in users if plain(u).get("sync_token")] + sorted(sim.issued_user_tokens())


def log_file(stack: LocalStack, function: str) -> Path:
    return stack.state / "logs" / f"{function}.log"


def log_marks(stack: LocalStack) -> dict[str, int]:
    """Where each function's log ends now (the files outlive a run: earlier runs' lines stay in them)."""
    return {f: log_file(stack, f).stat().st_size for f in stack.template.functions if log_file(stack, f).exists()}


def log_lines(stack: LocalStack, function: str, marks: dict[str, int]) -> list[dict[str, Any]]:
    """The function's structured (JSON) log lines written since ``marks``, as CloudWatch Logs would hold them."""
    lines = []
    with log_file(stack, function).open("rb") as log:
        log.seek(marks.get(function, 0))
        text = log.read().decode(errors="replace")
    for raw in text.splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def summaries(browser: webdriver.Chrome) -> set[str]:
    """The summary column (the first) of the calendars table on a user's page."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#calendars tr[data-calendar-id]")
    return {row.find_elements(By.TAG_NAME, "td")[0].text for row in rows}


@pytest.fixture(scope="module")
def ada(stack: LocalStack, sim: FeishuSimulator) -> str:
    """The demo user of ``make run``, onboarded with three calendars."""
    onboard(stack, sim, DEMO_USER, "Ada Lovelace", ("Team standup", "Meeting room 3F", "Holidays"))
    return DEMO_USER


def test_the_status_page_shows_the_users_calendars_and_updates_itself_after_a_pushed_change(
    stack: LocalStack, sim: FeishuSimulator, browser: webdriver.Chrome, ada: str
) -> None:
    # GIVEN the status page in a browser
    browser.get(f"{stack.api_url}/status")
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-open-id='{ada}']")
    assert "Ada Lovelace" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".state").get_attribute("data-state") == "ok"
    # WHEN the operator follows the link to Ada's page
    row.find_element(By.LINK_TEXT, "Ada Lovelace").click()
    WebDriverWait(browser, 10).until(expected_conditions.url_to_be(f"{stack.api_url}/status/{ada}"))
    # THEN it lists exactly the calendars Feishu has for her
    assert browser.current_url == f"{stack.api_url}/status/{ada}"
    shown = {
        r.get_attribute("data-calendar-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-calendar-id]")
    }
    assert shown == set(truth(sim, ada))
    assert {"Team standup", "Meeting room 3F", "Holidays"} <= summaries(browser)
    # WHEN a calendar is created in Feishu and Feishu pushes the change
    new_id = sim.create_calendar(ada, summary="Launch plan", description="Q3", role="owner")
    assert sim.push_calendar_changed([ada]).status_code == 200
    assert stack.wait_idle(60)
    # THEN the open page shows it within its refresh period, without the operator reloading it
    WebDriverWait(browser, AUTO_REFRESH_SECONDS * 3).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, f"tr[data-calendar-id='{new_id}']")
    )
    # AND it shows exactly Feishu's calendars, and the page holds no token
    shown = {
        r.get_attribute("data-calendar-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-calendar-id]")
    }
    assert shown == set(truth(sim, ada))
    assert new_id in shown
    assert "Launch plan" in summaries(browser)
    for secret in stored_secrets(stack, sim):
        assert secret not in browser.page_source
    browser.save_screenshot(str(stack.state / "status-page.png"))
    # WHEN the operator presses "Resync now" THEN a sync starts and the browser is back on Ada's page
    browser.find_element(By.ID, "resync").click()
    WebDriverWait(browser, 10).until(expected_conditions.url_contains("?resync="))
    assert browser.current_url == f"{stack.api_url}/status/{ada}?resync=started"
    assert "A sync was started." in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert stack.wait_idle(60)
    # WHEN the operator opens an unknown user's page THEN its "All users" link leads back to the overview
    browser.get(f"{stack.api_url}/status/ou_nobody")
    assert "Unknown user" in browser.title
    browser.find_element(By.LINK_TEXT, "All users").click()
    WebDriverWait(browser, 10).until(expected_conditions.url_to_be(f"{stack.api_url}/status"))
    assert browser.find_elements(By.CSS_SELECTOR, f"tr[data-open-id='{ada}']")


def test_json_status_has_the_health_counters_and_never_a_token(
    stack: LocalStack, sim: FeishuSimulator, ada: str
) -> None:
    # GIVEN a calendar deleted in Feishu and pushed
    victim = next(cid for cid, c in truth(sim, ada).items() if c.get("summary") == "Holidays")
    sim.delete_calendar(ada, victim)
    assert sim.push_calendar_changed([ada]).status_code == 200
    assert stack.wait_idle(60)
    # WHEN the overview and the user are asked for as JSON
    overview = requests.get(f"{stack.api_url}/status", headers=JSON, timeout=10)
    detail = requests.get(f"{stack.api_url}/status/{ada}", headers=JSON, timeout=10)
    # THEN they carry the health the sync recorded, the live calendars and the tombstone
    assert overview.headers["Content-Type"].startswith("application/json")
    users = {u["open_id"]: u for u in overview.json()["users"]}
    health = users[ada]
    assert health["calendars_mirrored"] == len(truth(sim, ada))
    for name in ("full_resync_count", "subscribed_at", "reauth_required", "last_attempt_at", "last_success_at"):
        assert name in health
    assert health["subscribed_at"] > 0
    assert health["reauth_required"] is False
    body = detail.json()
    assert {c["calendar_id"]: {k: v for k, v in c.items() if k in CALENDAR_FIELDS} for c in body["calendars"]} == truth(
        sim, ada
    )
    assert body["tombstones"] == 1
    for secret in stored_secrets(stack, sim):
        assert secret not in overview.text
        assert secret not in detail.text


def test_resync_route_and_make_resync_bring_in_a_change_that_was_never_pushed(
    stack: LocalStack, sim: FeishuSimulator, ada: str
) -> None:
    # GIVEN a change Feishu never pushed
    sim.create_calendar(ada, summary="never pushed")
    # WHEN the operator runs `make resync USER=...` against this stack's API
    port = stack.api_url.rsplit(":", 1)[1]
    make = shutil.which("make")
    assert make is not None
    done = subprocess.run(  # noqa: S603 - fixed arguments, our own Makefile
        [make, "--no-print-directory", "resync", f"USER={ada}", f"LOCAL_API_PORT={port}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # THEN the route answered that a sync started, and the mirror caught up
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["outcome"] in ("started", "coalesced")
    assert stack.wait_idle(60)
    detail = requests.get(f"{stack.api_url}/status/{ada}?format=json", timeout=10).json()
    assert {c["calendar_id"] for c in detail["calendars"]} == set(truth(sim, ada))
    # AND the JSON route says the same thing directly
    reply = requests.post(f"{stack.api_url}/status/{ada}/resync", headers=JSON, timeout=10)
    assert (reply.status_code, reply.json()["outcome"]) == (202, "started")
    assert stack.wait_idle(60)


def test_bad_status_requests_get_clear_answers_and_start_nothing(stack: LocalStack, ada: str) -> None:
    assert stack.lambda_api is not None
    before = len(stack.lambda_api.invocations)
    api = stack.api_url
    unknown = requests.post(f"{api}/status/ou_nobody/resync", headers=JSON, timeout=10)
    assert (unknown.status_code, unknown.json()["message"]) == (
        404,
        "No user with this open_id has authorised the mirror.",
    )
    assert requests.get(f"{api}/status/ou_nobody", timeout=10).status_code == 404
    assert requests.get(f"{api}/status?limit=0", headers=JSON, timeout=10).status_code == 400
    port = api.rsplit(":", 1)[1]
    for headers in (
        {"Origin": "https://evil.example"},  # an older browser, posting from another site's page
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": f"http://127.0.0.1:{int(port) + 1}", "Sec-Fetch-Site": "same-site"},  # another local port
        {"Origin": "null"},  # an opaque origin: a sandboxed frame, a data: page, a cross-origin redirect
    ):
        cross_site = requests.post(f"{api}/status/{ada}/resync", headers=headers, timeout=10)
        assert cross_site.status_code == 403, headers
        assert "Cross-origin requests cannot start a sync." in cross_site.text
        assert "<a href='../../status'>All users</a>" in cross_site.text
    assert len(stack.lambda_api.invocations) == before
    assert "Traceback" not in unknown.text


def test_the_resync_button_works_behind_a_sigv4_proxy_that_rewrites_the_host(stack: LocalStack, ada: str) -> None:
    # GIVEN the page's resync post as it reaches API Gateway through aws-sigv4-proxy on the operator's
    # machine: the browser posted to http://localhost:8080 (Origin, Sec-Fetch-Site: same-origin) and the
    # proxy rewrote Host to the execute-api domain
    proxied = {
        "Host": "abc123.execute-api.us-east-1.amazonaws.com",
        "Origin": "http://localhost:8080",
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    # WHEN it arrives
    reply = requests.post(f"{stack.api_url}/status/{ada}/resync", headers=proxied, allow_redirects=False, timeout=10)
    # THEN a sync is started and the browser is sent back to the user's page, relatively (so through the proxy)
    assert reply.status_code == 303, reply.text
    assert reply.headers["Location"] == f"../{ada}?resync=started"
    assert stack.wait_idle(60)
    # AND a page of another site posting through the same proxy is still refused
    forged = {**proxied, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert requests.post(f"{stack.api_url}/status/{ada}/resync", headers=forged, timeout=10).status_code == 403


def test_one_event_is_followed_from_the_push_to_the_write_through_the_logs(
    stack: LocalStack, sim: FeishuSimulator
) -> None:
    # GIVEN a synced user and a change in Feishu
    open_id = "ou_e2e_logs"
    onboard(stack, sim, open_id, "Log Reader", ("first",))
    sim.create_calendar(open_id, summary="followed")
    delivery_id = f"evt-logs-{uuid.uuid4().hex}"
    marks = log_marks(stack)
    # WHEN Feishu pushes one event with a known delivery id (its header.event_id)
    headers, body = sim.build_callback_request(sim.calendar_changed_payload([open_id], delivery_id=delivery_id))
    assert requests.post(f"{stack.api_url}/feishu/events", data=body, headers=headers, timeout=10).status_code == 200
    assert stack.wait_idle(60)
    # THEN the callback's log line for that push carries its delivery_id and the sync it started
    dispatched = [
        line
        for line in log_lines(stack, "CallbackFunction", marks)
        if line.get("delivery_id") == delivery_id and line.get("message") == "event_dispatched"
    ]
    assert len(dispatched) == 1
    assert dispatched[0]["started"] == 1
    # AND its trail line names the user the event started a sync for (the way from delivery_id to open_id)
    trail = [
        line
        for line in log_lines(stack, "CallbackFunction", marks)
        if line.get("delivery_id") == delivery_id and line.get("message") == "pings_dispatched"
    ]
    assert [(line["started_open_ids"], line["coalesced_open_ids"]) for line in trail] == [([open_id], [])]
    # AND the sync's lines carry the user's open_id and the reason, up to the write it made
    sync = [
        line
        for line in log_lines(stack, "SyncFunction", marks)
        if line.get("open_id") == open_id and line.get("reason") == "calendar_changed"
    ]
    completed = [line for line in sync if line.get("message") == "sync_completed"]
    assert len(completed) == 1
    assert completed[0]["delivery_id"] == delivery_id
    assert completed[0]["upserted"] == 1
    assert completed[0]["timestamp"] >= dispatched[0]["timestamp"]
    lag = [line for line in sync if line.get("message") == "event_to_mirror_lag"]
    assert len(lag) == 1
    assert 0 <= lag[0]["lag_seconds"] < 30
    # AND the lag went out as a CloudWatch metric (embedded metric format)
    emf = [line for line in log_lines(stack, "SyncFunction", marks) if "EventToMirrorLag" in line and "_aws" in line]
    units = {m["Name"]: m["Unit"] for line in emf for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["EventToMirrorLag"] == "Seconds"


def test_a_feishu_failure_is_logged_with_its_log_id_and_shown_on_the_status_page(
    stack: LocalStack, sim: FeishuSimulator
) -> None:
    # GIVEN a synced user whose next listing Feishu refuses
    open_id = "ou_e2e_logid"
    onboard(stack, sim, open_id, "Refused", ())
    sim.inject(CALENDARS_PATH, feishu_error(190002, http_status=400, msg="invalid parameters"))
    marks = log_marks(stack)
    # WHEN the sync runs
    assert stack.invoke("SyncFunction", {"open_id": open_id, "reason": "test"}).payload["outcome"] == "failed"
    # THEN the failed call and the failed sync are logged with Feishu's X-Tt-Logid and the open_id
    lines = [line for line in log_lines(stack, "SyncFunction", marks) if line.get("open_id") == open_id]
    call = [line for line in lines if line.get("message") == "feishu_call_failed"]
    failed = [line for line in lines if line.get("message") == "sync_failed"]
    assert len(call) == len(failed) == 1
    assert call[0]["log_id"]
    assert call[0]["log_id"] == failed[0]["log_id"]
    assert (call[0]["code"], failed[0]["code"]) == (190002, 190002)
    # AND the status page shows the user as failing with that error
    health = requests.get(f"{stack.api_url}/status/{open_id}", headers=JSON, timeout=10).json()["user"]
    assert (health["state"], health["last_error_code"], health["consecutive_failures"]) == ("failing", 190002, 1)
    # AND the listing fixed, a resync through the status route clears it
    assert requests.post(f"{stack.api_url}/status/{open_id}/resync", headers=JSON, timeout=10).status_code == 202
    assert stack.wait_idle(60)
    health = requests.get(f"{stack.api_url}/status/{open_id}", headers=JSON, timeout=10).json()["user"]
    assert (health["state"], health["consecutive_failures"]) == ("ok", 0)


def test_an_iam_signed_request_as_api_gateway_delivers_it_is_served_and_its_caller_logged(
    stack: LocalStack, ada: str
) -> None:
    # GIVEN the sample events of the IAM-authorised routes (events/status-*.json), pointed at Ada
    samples = {
        name: json.loads((ROOT / "events" / f"status-{name}.json").read_text()) for name in ("overview", "resync")
    }
    resync = json.loads(json.dumps(samples["resync"]).replace("ou_sample_user", ada))
    caller = resync["requestContext"]["authorizer"]["iam"]["userArn"]
    # WHEN the status function is invoked with them, as API Gateway would after checking the signature
    marks = log_marks(stack)
    overview = stack.invoke("StatusFunction", samples["overview"]).payload
    started = stack.invoke("StatusFunction", resync).payload
    assert stack.wait_idle(60)
    # THEN both are served, and the resync's log line names the IAM principal that asked for it
    assert overview["statusCode"] == 200
    assert ada in {u["open_id"] for u in json.loads(overview["body"])["users"]}
    assert (started["statusCode"], json.loads(started["body"])["outcome"]) == (202, "started")
    logged = [line for line in log_lines(stack, "StatusFunction", marks) if line.get("message") == "operator_resync"]
    assert [(line["open_id"], line["requested_by"]) for line in logged] == [(ada, caller)]


def test_no_table_item_holds_a_token_in_plaintext(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN everything this module did through the local stack (onboarding, syncs, refreshes, pushes)
    # WHEN every table is scanned THEN no item holds a token Feishu issued, as text or inside binary
    assert assert_no_plaintext_token(stack, sim.issued_user_tokens()) > 0

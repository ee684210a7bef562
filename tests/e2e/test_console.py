"""The console in a real headless Chromium over real HTTP, on SQLite and PostgreSQL: sign in, read a plan and
its chart, resolve a conflict, replay a dead outbox entry and a dead delivery, sign out; and the guards
(no session: redirect; no CSRF token: 403) with plain HTTP requests.

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver);
nothing is downloaded. Screenshots go to test-artifacts/ (not committed).
"""

import json
import re
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as until
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from service.api.app import create_app
from service.domain import codec
from service.domain.model import Plan
from service.store.tables import DeliveryRow
from service.store.uow import UnitOfWork
from tests.support import FIXTURES, settings

KEY = "console-key-0123456789abcdef"
FHIR = "http://127.0.0.1:9/fhir"  # never contacted: no worker runs here; only links are drawn to it
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class Console:
    """The app on a free port, with a plan that has check-ins, an open conflict, a dead push and a dead delivery."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.app = create_app(settings(fhir_base_url=FHIR, api_keys=(KEY,)), engine)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text()))
        now = datetime.now(UTC)
        with UnitOfWork(engine) as uow:
            self.plan.touch(now.isoformat())
            uow.plans.save(self.plan)
            conflict = uow.sync.add_conflict(
                self.plan.id, "what_matters", "Walking again.", self.plan.what_matters, "Walking my daughter.", now
            )
            state = uow.sync.state(self.plan.id)
            state.status, state.last_error = "conflicted", "HTTP 412 on Goal/g-1: version conflict"
            uow.links.record(self.plan.id, "careplan", "CarePlan", "cp-1", "3", now)
            uow.outbox.add(self.plan.id, "push_plan", None, None, now)
            uow.flush()
            dead = uow.outbox.list(self.plan.id)[0]
            dead.status, dead.attempts, dead.last_error = "dead", 8, "FhirTransportError: connection refused"
            sub = uow.subscriptions.add("https://team.example.org/hook", ["*"], "whsec_" + "A" * 32, None, now)
            delivery = DeliveryRow(
                subscription_id=sub.id,
                plan_id=self.plan.id,
                sequence=uow.deliveries.next_sequence(self.plan.id),  # numbered as record_change numbers them
                event_type="plan.changed",
                payload={},
                webhook_id="msg_console_test",
                status="dead",
                attempts=10,
                next_attempt_at=now,
                last_status_code=500,
                last_error="HTTP 500",
                attempt_log=[],
                created_at=now,
            )
            assert uow.session is not None
            uow.session.add(delivery)
            uow.commit()
            self.conflict_id, self.outbox_id, self.delivery_id = conflict.id, dead.id, delivery.id

    def signed_in_session(self) -> tuple[requests.Session, str]:
        """Return a requests session signed in through the form, and its CSRF token."""
        http = requests.Session()
        page = http.get(f"{self.url}/console/sign-in", timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        answer = http.post(
            f"{self.url}/console/sign-in", data={"api_key": KEY, "csrf_token": token}, allow_redirects=False, timeout=10
        )
        assert answer.status_code == 302 and answer.headers["Location"].endswith("/console/")
        page = http.get(f"{self.url}/console/plans/{self.plan.id}", timeout=10)
        return http, re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)

    def outbox_status(self) -> str:
        with UnitOfWork(self.engine) as uow:
            return uow.outbox.get(self.outbox_id).status


@pytest.fixture
def console(engine):
    served = Console(engine)
    yield served
    served.server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("the browser tests need the Debian packages chromium and chromium-driver (apt-get install)")
    profile = tempfile.mkdtemp(prefix="planbridge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # an explicit driver: no downloads
    driver.implicitly_wait(5)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _click(driver, by: str, what: str, *, url: str | None = None, text: str | None = None) -> None:
    """Click, then wait until the next page's URL or text is there (a click does not wait for the page).

    Every click here submits a form or follows a link, so the old document must go first: it is marked
    before the click and the wait holds until a document without the mark is loaded, so the later checks
    never read (or race) the page being torn down. Chromium may answer with an error while it swaps the
    document; such answers only mean "not yet".
    """
    driver.execute_script("document.documentElement.dataset.leaving = '1'")
    driver.find_element(by, what).click()
    wait = WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,))
    wait.until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && !document.documentElement.dataset.leaving"
        )
    )
    if url is not None:
        wait.until(until.url_contains(url))
    if text is not None:
        wait.until(until.text_to_be_present_in_element((By.TAG_NAME, "body"), text))


def _screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 8000))
    driver.save_screenshot(str(ARTIFACTS / name))
    driver.set_window_size(1280, 1000)


def test_a_user_signs_in_reads_a_plan_and_its_chart_acts_on_sync_and_signs_out(console, browser, request):
    backend = request.node.callspec.params["database"]
    browser.delete_all_cookies()
    browser.get(f"{console.url}/console/")
    assert browser.current_url.endswith("/console/sign-in")  # no session: to the sign-in page
    browser.find_element(By.ID, "api_key").send_keys(KEY)
    _click(browser, By.ID, "sign-in", text="Open conflicts")
    assert browser.current_url.endswith("/console/")

    row = browser.find_element(By.XPATH, f"//tr[th//a[contains(@href, '/console/plans/{console.plan.id}')]]")
    assert "MRN-•••650" in row.text and "Conflicted" in row.text and console.plan.patient.display_name not in row.text
    _screenshot(browser, f"console-plans-{backend}.png")
    browser.find_element(By.ID, "state").send_keys("In sync")
    _click(browser, By.CSS_SELECTOR, "form.filter button", url="state=in_sync", text="No plans in this state")
    browser.get(f"{console.url}/console/?state=conflicted")
    _click(browser, By.LINK_TEXT, console.plan.title, url=f"/console/plans/{console.plan.id}")

    assert browser.find_element(By.TAG_NAME, "h1").text == console.plan.title
    assert console.plan.what_matters in browser.find_element(By.CSS_SELECTOR, "blockquote.what-matters").text
    charts = browser.find_elements(By.CSS_SELECTOR, "svg[role='img']")
    assert charts, "no progress chart"
    title = charts[0].find_element(By.TAG_NAME, "title")
    assert title.get_attribute("textContent").startswith("Progress: ")
    assert charts[0].find_elements(By.CSS_SELECTOR, "circle.point") and charts[0].find_elements(
        By.CLASS_NAME, "due-line"
    )
    assert browser.find_elements(By.CSS_SELECTOR, "table.checkins tbody tr")
    assert "Agrees" in browser.find_element(By.CSS_SELECTOR, "table.agreements").text
    link = browser.find_element(By.LINK_TEXT, "CarePlan/cp-1")
    assert link.get_attribute("href") == f"{FHIR}/CarePlan/cp-1"
    _screenshot(browser, f"console-plan-{backend}.png")

    resolved_words = f"Conflict {console.conflict_id} (what_matters) resolved: took ours."
    _click(browser, By.ID, f"conflict-{console.conflict_id}-ours", text=resolved_words)
    with UnitOfWork(console.engine) as uow:
        resolved = uow.sync.conflict(console.conflict_id)
        assert (resolved.status, resolved.resolution) == ("resolved", "ours")
        assert uow.sync.state(console.plan.id).status == "pending"

    _click(browser, By.ID, f"outbox-{console.outbox_id}-replay", text=f"Outbox entry {console.outbox_id} queued again.")
    assert console.outbox_status() == "pending"
    assert not browser.find_elements(By.ID, f"outbox-{console.outbox_id}-replay")

    _click(
        browser, By.ID, f"delivery-{console.delivery_id}-replay", text=f"Delivery {console.delivery_id} queued again."
    )
    with UnitOfWork(console.engine) as uow:
        assert uow.deliveries.get(console.delivery_id).status == "pending"

    _click(browser, By.ID, "sign-out", url="/console/sign-in", text="You are signed out.")
    browser.get(f"{console.url}/console/plans/{console.plan.id}")
    assert browser.current_url.endswith("/console/sign-in")


def test_without_a_session_every_page_redirects_to_sign_in(console):
    for path in ("/console/", f"/console/plans/{console.plan.id}", "/console/?state=failed"):
        answer = requests.get(console.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and answer.headers["Location"].endswith("/console/sign-in")
    assert requests.get(f"{console.url}/console/sign-in", timeout=10).status_code == 200
    css = requests.get(f"{console.url}/console/static/console.css", timeout=10)
    assert css.status_code == 200 and "focus-visible" in css.text


def test_a_forged_action_without_the_csrf_token_is_refused(console):
    http, token = console.signed_in_session()
    replay = f"{console.url}/console/outbox/{console.outbox_id}/replay"
    for form in ({}, {"csrf_token": ""}, {"csrf_token": token[:-2] + "xx"}):
        refused = http.post(replay, data=form, allow_redirects=False, timeout=10)
        assert refused.status_code == 403 and "security token" in refused.text
    assert console.outbox_status() == "dead"
    # and a cross-site form without the session cookie does no better
    assert requests.post(replay, data={"csrf_token": token}, allow_redirects=False, timeout=10).status_code == 403
    done = http.post(replay, data={"csrf_token": token}, allow_redirects=False, timeout=10)
    assert done.status_code == 302 and console.outbox_status() == "pending"


def test_the_session_cookie_is_strict_httponly_and_never_holds_the_key(console):
    http = requests.Session()
    page = http.get(f"{console.url}/console/sign-in", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    wrong = http.post(
        f"{console.url}/console/sign-in", data={"api_key": KEY[:-1] + "X", "csrf_token": token}, timeout=10
    )
    assert wrong.status_code == 401 and "not valid" in wrong.text
    answer = http.post(
        f"{console.url}/console/sign-in", data={"api_key": KEY, "csrf_token": token}, allow_redirects=False, timeout=10
    )
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS case below
    value = http.cookies["planbridge_console"]
    data = console.app.session_interface.get_signing_serializer(console.app).loads(value)
    assert set(data) == {"sid", "exp", "kfp", "csrf", "_permanent"} and KEY not in json.dumps(data)
    assert data["csrf"] != token  # a new token once signed in
    page = http.get(f"{console.url}/console/", timeout=10)
    assert "Content-Security-Policy" in page.headers and page.headers["Cache-Control"] == "no-store"

    https = console.app.test_client()
    page = https.get("/console/sign-in", base_url="https://console.example.org")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert "Secure" in page.headers["Set-Cookie"]
    signed = https.post(
        "/console/sign-in", data={"api_key": KEY, "csrf_token": token}, base_url="https://console.example.org"
    )
    assert "Secure" in signed.headers["Set-Cookie"]


def test_display_names_show_only_when_the_setting_allows(engine):
    app = create_app(settings(fhir_base_url=FHIR, api_keys=(KEY,), console_show_names=True), engine)
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text()))
    with UnitOfWork(engine) as uow:
        plan.touch(datetime.now(UTC).isoformat())
        uow.plans.save(plan)
        uow.commit()
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/sign-in").text).group(1)
    client.post("/console/sign-in", data={"api_key": KEY, "csrf_token": token})
    assert plan.patient.display_name in client.get("/console/").text
    assert plan.patient.display_name in client.get(f"/console/plans/{plan.id}").text


def test_refused_actions_answer_with_a_page_saying_why(console):
    http, token = console.signed_in_session()
    missing = http.get(f"{console.url}/console/plans/no-such-plan", timeout=10)
    assert (
        missing.status_code == 404
        and "does not exist" in missing.text
        and "text/html" in missing.headers["Content-Type"]
    )
    for path, form, status in (
        (f"/console/conflicts/{console.conflict_id}/resolve", {"take": "both"}, 400),
        ("/console/conflicts/999999/resolve", {"take": "ours"}, 404),
        (f"/console/outbox/{2**40}/replay", {}, 404),
        (f"/console/deliveries/{console.delivery_id + 1000}/replay", {}, 404),
    ):
        answer = http.post(console.url + path, data={**form, "csrf_token": token}, allow_redirects=False, timeout=10)
        assert answer.status_code == status, path
    http.post(f"{console.url}/console/outbox/{console.outbox_id}/replay", data={"csrf_token": token}, timeout=10)
    again = http.post(
        f"{console.url}/console/outbox/{console.outbox_id}/replay", data={"csrf_token": token}, timeout=10
    )
    assert again.status_code == 422 and "only dead entries are replayed" in again.text


def test_the_plans_list_goes_a_page_at_a_time_and_filters_across_pages(console):
    # The fixture plan (conflicted) plus 120 more: every fourth failed, the rest never synced (pending).
    template = json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text())
    now = datetime.now(UTC)
    with UnitOfWork(console.engine) as uow:
        for n in range(120):
            plan = codec.from_dict(Plan, {**template, "id": f"page-{n:03d}"})
            plan.touch(now.isoformat())
            uow.plans.save(plan)
            if n % 4 == 0:
                uow.sync.state(plan.id).status = "failed"
        uow.commit()
    http, _token = console.signed_in_session()

    def walk(path: str) -> tuple[list[str], list[str]]:
        ids, captions = [], []
        while path:
            page = http.get(console.url + path, timeout=10)
            assert page.status_code == 200
            ids += re.findall(r'<span class="muted">([^<]+)</span></th>', page.text)
            captions.append(re.search(r"<caption>(.*?)</caption>", page.text, re.S).group(1))
            following = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            path = following.group(1).replace("&amp;", "&") if following else None
        return ids, captions

    everything, captions = walk("/console/")
    # The plan with an open conflict first, then the rest in id order.
    assert everything[0] == console.plan.id and sorted(everything[1:]) == everything[1:]
    assert len(everything) == len(set(everything)) == 121
    first = "; 1 with open conflicts, listed first"
    assert captions == [
        f"121 plans: 50 on this page{first}",
        f"121 plans: 50 on this page{first}",
        f"121 plans: 21 on this page{first}",
    ]
    failed, captions = walk("/console/?state=failed")
    assert failed == [f"page-{n:03d}" for n in range(0, 120, 4)]
    assert captions == ["30 plans with sync state “Failed”"]  # one page: no paging words
    conflicted = http.get(f"{console.url}/console/?state=conflicted", timeout=10).text
    assert (
        console.plan.id in conflicted and f'/console/plans/{console.plan.id}#conflicts" id="conflicts-of-' in conflicted
    )
    assert ">1 open conflict</a>" in conflicted  # its open conflict, a link to it
    too_long = http.get(f"{console.url}/console/?after={'x' * 200}", timeout=10)
    assert too_long.status_code == 200 and "page-000" in too_long.text  # no such id: the first page


def test_a_plans_page_shows_its_waiting_and_dead_entries_and_only_the_latest_done(console):
    now = datetime.now(UTC)
    with UnitOfWork(console.engine) as uow:
        for _ in range(30):
            uow.outbox.add(console.plan.id, "push_plan", None, None, now)
        uow.flush()
        rows = uow.outbox.list(console.plan.id)
        for row in rows[1:-1]:  # the first is the fixture's dead entry; the last stays pending
            uow.outbox.mark_done(row, now)
        uow.commit()
    http, _token = console.signed_in_session()
    page = http.get(f"{console.url}/console/plans/{console.plan.id}", timeout=10).text
    shown = [int(n) for n in re.findall(r'<tr id="outbox-(\d+)">', page)]
    done_ids = [r.id for r in rows[1:-1]]
    assert shown == [rows[0].id, *done_ids[-20:], rows[-1].id]  # dead, the latest 20 done, pending
    assert "(9 older done not shown)" in page and f'id="outbox-{rows[0].id}-replay"' in page


def test_a_plans_page_shows_its_open_and_dead_deliveries_and_only_the_latest_delivered(console):
    now = datetime.now(UTC)
    with UnitOfWork(console.engine) as uow:
        assert uow.session is not None
        sub = uow.subscriptions.list()[0]
        for n in range(25):
            uow.session.add(
                DeliveryRow(
                    subscription_id=sub.id,
                    plan_id=console.plan.id,
                    sequence=n + 2,
                    event_type="plan.changed",
                    payload={},
                    webhook_id=f"msg_console_{n}",
                    status="delivered",
                    attempts=1,
                    next_attempt_at=now,
                    attempt_log=[],
                    created_at=now,
                    delivered_at=now,
                )
            )
        uow.commit()
        delivered = [d.id for d in uow.deliveries.list(plan_id=console.plan.id) if d.status == "delivered"]
    http, _token = console.signed_in_session()
    page = http.get(f"{console.url}/console/plans/{console.plan.id}", timeout=10).text
    shown = [int(n) for n in re.findall(r'<tr id="delivery-(\d+)">', page)]
    assert shown == [console.delivery_id, *delivered[-20:]] and "(5 older delivered not shown)" in page

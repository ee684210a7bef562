"""The console for clinicians, in headless Chromium over real HTTP, on SQLite and PostgreSQL: a plan with three
goals rated on Goal-Based Outcomes at baseline and two reviews (a chart per goal with its reliable-change band
and its table), a plan scaled with Goal Attainment Scaling (the summary chart, its table and T-score), plain
words for statuses with the reason and date of a change, contingency plans and the timeline; axe-core clean.

The plans come in through the service's own doors: `planbridge plans import`'s use case (import_document)
for the fixture plans, and a signed `goal.status_changed` event on POST /webhooks/team. Screenshots go to
test-artifacts/ (not committed): the whole plan pages and each kind of chart on its own.

The typed value of a conflict resolution (and its refusals, shown by the field) is checked over plain HTTP.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as until
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from service.api.app import create_app
from service.store.repo_sync import EhrOrigin
from service.store.uow import UnitOfWork
from service.sync.adopt import import_document
from tests.e2e.test_console import ARTIFACTS, FHIR, KEY, Console, browser  # noqa: F401  (a fixture)
from tests.e2e.test_console_layout import (  # noqa: F401  (axe_source: a fixture)
    WIDTHS,
    at_width,
    axe_source,
    axe_violations,
    go,
    page_scrolls_sideways,
    screenshot,
)
from tests.support import FIXTURES, settings, signed

MINUS = "\u2212"
GBO_PLAN, GAS_PLAN = "plan-gbo-0010", "plan-gas-0011"


class Served:
    """The app on a free port with the GBO and GAS fixture plans imported, and one signed team event sent."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.settings = settings(fhir_base_url=FHIR, api_keys=(KEY,))
        self.app = create_app(self.settings, engine)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        for name in ("gbo-three-goals", "gas-rehab"):
            document = json.loads((FIXTURES / "plans" / f"{name}.json").read_text())
            import_document(UnitOfWork(engine), document, self.settings, datetime.now(UTC))
        event = {
            "type": "goal.status_changed",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "plan_id": GBO_PLAN,
                "goal_id": "goal-friends",
                "lifecycle_status": "on-hold",
                "achievement": "no-progress",
                "reason": "Waiting until the exams are over",
                "date": "2026-11-24",
            },
        }
        body = json.dumps(event).encode()
        answer = requests.post(f"{self.url}/webhooks/team", data=body, headers=signed(body), timeout=10)
        assert answer.status_code == 202, answer.text


@pytest.fixture
def served(engine):
    running = Served(engine)
    yield running
    running.server.shutdown()


def _sign_in(driver, url: str) -> None:
    driver.delete_all_cookies()
    go(driver, f"{url}/console/sign-in")
    driver.find_element(By.ID, "api_key").send_keys(KEY)
    driver.find_element(By.ID, "sign-in").click()
    # The click submits the form asynchronously: navigating at once could leave before the sign-in was sent
    # (seen once in a full run: no POST, then every page redirected to the sign-in form).
    WebDriverWait(driver, 10).until(until.url_matches(r"/console/$"))


def _rows(table) -> list[list[str]]:
    return [
        [cell.text for cell in tr.find_elements(By.XPATH, "./th|./td")]
        for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]


def _accessible_image(driver, svg) -> tuple[str, str]:
    """The chart is an image named by its <title> and described by its <desc> (aria-labelledby both)."""
    assert svg.get_attribute("role") == "img"
    title_id, desc_id = svg.get_attribute("aria-labelledby").split()
    title = driver.find_element(By.ID, title_id).get_attribute("textContent")
    desc = driver.find_element(By.ID, desc_id).get_attribute("textContent")
    return title, desc


def test_a_clinician_reads_gbo_charts_per_goal_and_a_gas_summary_with_their_tables(
    served,
    browser,  # noqa: F811
    axe_source,  # noqa: F811
    request,
):
    backend = request.node.callspec.params["database"]
    at_width(browser, "desktop")
    try:
        _sign_in(browser, served.url)
        go(browser, f"{served.url}/console/plans/{GBO_PLAN}")

        # A GBO chart per goal: the baseline and two reviews, the reliable-change band, and the same as a table.
        figures = browser.find_elements(By.CSS_SELECTOR, "figure.gbo-figure svg.gbo")
        assert len(figures) == 3
        steady, better = "not a reliable change", "a reliable improvement"
        expected = {
            "Get to sleep within half an hour of going to bed": (["2", "4", "6"], ["—", "+2", "+4"], better),
            "Go to every lesson on three days a week": (["3", "4", "5"], ["—", "+1", "+2"], steady),
            "Meet a friend outside school once a week": (["5", "5", "4"], ["—", "0", f"{MINUS}1"], steady),
        }  # fmt: skip
        for svg in figures:
            title, desc = _accessible_image(browser, svg)
            goal = title.removeprefix("Goal-based outcome: ")
            scores, changes, verdict = expected[goal]
            assert "3 ratings" in desc and "reliable-change band" in desc and verdict in desc
            assert len(svg.find_elements(By.CSS_SELECTOR, "rect.baseline-point")) == 1
            assert len(svg.find_elements(By.CSS_SELECTOR, "circle.point")) == 2
            band = svg.find_element(By.CSS_SELECTOR, "rect.rc-band")
            assert band.size["height"] > 0 and band.size["width"] > 300
            dates = [t.text for t in svg.find_elements(By.CSS_SELECTOR, "text.date-tick")]
            assert dates == ["1 Sep 2026", "13 Oct 2026", "24 Nov 2026"]
            table = svg.find_element(By.XPATH, "ancestor::article//table[contains(@class, 'gbo-table')]")
            caption = table.find_element(By.TAG_NAME, "caption").text
            assert caption.startswith(f"Goal-based outcome ratings: {goal}") and verdict in caption
            rows = _rows(table)
            assert [r[:4] for r in rows] == [
                [d, o, s, c]
                for d, o, s, c in zip(dates, ["Baseline", "Review", "Review"], scores, changes, strict=True)
            ]
            headers = table.find_elements(By.CSS_SELECTOR, "thead th")
            assert {h.get_attribute("scope") for h in headers} == {"col"}
            assert {th.get_attribute("scope") for th in table.find_elements(By.CSS_SELECTOR, "tbody th")} == {"row"}

        # Plain words for statuses, the FHIR code beside them; the reason and date of the change the event made.
        friends = browser.find_element(By.XPATH, "//article[h3='Meet a friend outside school once a week']")
        assert friends.find_element(By.CSS_SELECTOR, ".goal-status").text == (
            "Paused (on-hold) — since 24 Nov 2026; reason: Waiting until the exams are over"
        )
        assert friends.find_element(By.CSS_SELECTOR, ".goal-achievement").text == "No progress (no-progress)"
        sleep = browser.find_element(By.XPATH, "//article[h3='Get to sleep within half an hour of going to bed']")
        assert sleep.find_element(By.CSS_SELECTOR, ".goal-status").text == "Being worked on (active)"
        # Contingency plans, each with who acts on it.
        school = browser.find_element(By.XPATH, "//article[h3='Go to every lesson on three days a week']")
        plans = [li.text for li in school.find_elements(By.CSS_SELECTOR, "ul.contingencies li")]
        assert plans == [
            "If I miss a morning, then Text the school's learning mentor and go in after lunch\nWho acts: the patient",
            "If Two missed days in a week, then Call the clinician to move the review forward\nWho acts: Alex Demo",
        ]
        # The timeline: the signed event, from the team through its sender, naming what it changed.
        entries = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
        assert entries and "Goal status changed · from the team, through default" in entries[0].text
        changed = entries[0].text.split("changed: ", 1)[1]
        assert changed.startswith("goal “Meet a friend outside school once a week”: ") and "lifecycle status" in changed

        assert axe_violations(browser, axe_source) == []
        at_width(browser, "phone")  # the charts shrink to a phone's width; the page never scrolls sideways
        assert not page_scrolls_sideways(browser) and figures[0].size["width"] < WIDTHS["phone"][0]
        at_width(browser, "desktop")
        ARTIFACTS.mkdir(exist_ok=True)
        figures[0].find_element(By.XPATH, "..").screenshot(str(ARTIFACTS / f"console-gbo-chart-{backend}.png"))
        screenshot(browser, f"console-gbo-plan-{backend}.png", *WIDTHS["desktop"])

        # The GAS summary: each goal's latest level with what it means for that goal, and the T-score.
        go(browser, f"{served.url}/console/plans/{GAS_PLAN}")
        svg = browser.find_element(By.CSS_SELECTOR, "figure.gas-figure svg.gas")
        title, desc = _accessible_image(browser, svg)
        # weights 2, 1, 1 and levels +1, 0, -1: 50 + 10 * 1 / sqrt(0.7 * 6 + 0.3 * 16) = 53.3
        assert title.startswith("Goal attainment scaling") and desc.startswith("GAS T-score 53.3")
        marks = svg.find_elements(By.CSS_SELECTOR, "circle.gas-level")
        ticks = {t.text: t.location["x"] for t in svg.find_elements(By.CSS_SELECTOR, "text.tick")}
        centres = [m.location["x"] + m.size["width"] / 2 for m in marks]
        assert len(marks) == 3
        for centre, level in zip(centres, ["+1", "0", f"{MINUS}1"], strict=True):
            tick = next(t for t in svg.find_elements(By.CSS_SELECTOR, "text.tick") if t.text == level)
            assert abs(centre - (tick.location["x"] + tick.size["width"] / 2)) < 3, (level, ticks)
        table = browser.find_element(By.CSS_SELECTOR, "table.gas-table")
        assert "GAS T-score 53.3" in table.find_element(By.TAG_NAME, "caption").text
        nov26 = "26 Nov 2026"
        assert _rows(table) == [
            ["Make my own breakfast", "+1", "Also makes cereal and clears up alone", nov26, "2"],
            [
                "Walk to the corner shop",
                "0",
                "Walks to the corner shop and back with a stick, with someone",
                nov26,
                "1",
            ],
            [
                "Go up and down the stairs at home",
                f"{MINUS}1",
                "Goes up the stairs with two people helping",
                nov26,
                "1",
            ],
        ]
        assert axe_violations(browser, axe_source) == []
        svg.find_element(By.XPATH, "..").screenshot(str(ARTIFACTS / f"console-gas-summary-{backend}.png"))
        screenshot(browser, f"console-gas-plan-{backend}.png", *WIDTHS["desktop"])
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture
def console(engine):
    served = Console(engine)
    yield served
    served.server.shutdown()


def _resolve(http: requests.Session, console: Console, conflict_id: int, token: str, **form: str) -> requests.Response:
    return http.post(
        f"{console.url}/console/conflicts/{conflict_id}/resolve",
        data={**form, "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )


def test_a_conflict_is_resolved_with_a_typed_value_and_a_value_that_cannot_be_taken_is_shown_by_its_field(console):
    with UnitOfWork(console.engine) as uow:
        goal = console.plan.goals[0]
        priority = {
            "codings": [{"system": "http://terminology.hl7.org/CodeSystem/goal-priority", "code": "low-priority"}]
        }
        changed = datetime(2026, 11, 20, 14, 5, 9, tzinfo=UTC)
        origin = EhrOrigin("Goal", "g-77", "5", changed, "urn:ehr:goal-editor")  # as a pull records it
        coded = uow.sync.add_conflict(
            console.plan.id, f"goals[id={goal.id}].priority", None, None, priority, datetime.now(UTC), origin
        )
        uow.commit()
        coded_id = coded.id
    http, token = console.signed_in_session()
    page = http.get(f"{console.url}/console/plans/{console.plan.id}", timeout=10).text
    # Who holds the EHR side, its version, when it was read and when the conflict was noticed.
    side = re.search(rf'<p class="ehr-side" id="conflict-{console.conflict_id}-ehr">(.*?)</p>', page, re.S).group(1)
    assert "CarePlan/cp-1</a>, version 3, last read " in side and "Conflict noticed " in side
    # Who changed the EHR side and when: "not recorded" for a conflict whose pull did not say; the recorded
    # resource, version, meta.source and meta.lastUpdated for one that did.
    assert " ".join(re.sub(r"<[^>]+>", "", side).split()).endswith(
        "Changed in the EHR by not recorded on not recorded."
    )
    coded_side = re.search(rf'<p class="ehr-side" id="conflict-{coded_id}-ehr">(.*?)</p>', page, re.S).group(1)
    assert "Goal/g-77</a>, version 5." in coded_side and "last read" not in coded_side
    assert " ".join(re.sub(r"<[^>]+>", "", coded_side).split()).endswith(
        "Changed in the EHR by urn:ehr:goal-editor on 2026-11-20 14:05 UTC."
    )
    # A text field is typed as text; a coded one as JSON, said in its label.
    assert f'<label for="conflict-{console.conflict_id}-value">Or keep another value</label>' in page
    assert f'<label for="conflict-{coded_id}-value">Or keep another value (JSON)</label>' in page

    for conflict_id, value, words in (
        (console.conflict_id, "   ", "enter the value to keep"),
        (coded_id, '{"codings": [', "that is not JSON: Expecting value (line 1, column 14)"),
        (coded_id, '"urgent"', "that value does not fit goals[id="),
    ):
        refused = _resolve(http, console, conflict_id, token, take="value", value=value)
        assert refused.status_code == 422 and "text/html" in refused.headers["Content-Type"]
        field = re.search(rf'<textarea name="value" id="conflict-{conflict_id}-value"[^>]*>', refused.text).group(0)
        assert (
            'aria-invalid="true"' in field and f"conflict-{conflict_id}-value-error" in field and "autofocus" in field
        )
        error = re.search(rf'id="conflict-{conflict_id}-value-error" role="alert">([^<]*)<', refused.text).group(1)
        assert words in error.replace("&#34;", '"'), error
        assert value.strip() in refused.text.replace("&#34;", '"')  # what was typed is kept to correct
    with UnitOfWork(console.engine) as uow:
        assert {c.id for c in uow.sync.conflicts(console.plan.id)} == {console.conflict_id, coded_id}  # none taken

    taken = _resolve(http, console, console.conflict_id, token, take="value", value="Walking with my daughter.\r\n")
    assert taken.status_code == 302 and taken.headers["Location"].endswith("#notice")
    notice = http.get(console.url + taken.headers["Location"], timeout=10).text
    assert f"Conflict {console.conflict_id} (what_matters) resolved: took the value given." in notice
    high = json.dumps({"codings": [{"system": priority["codings"][0]["system"], "code": "high-priority"}]})
    assert _resolve(http, console, coded_id, token, take="value", value=high).status_code == 302
    with UnitOfWork(console.engine) as uow:
        first, second = uow.sync.conflict(console.conflict_id), uow.sync.conflict(coded_id)
        assert (first.status, first.resolution, second.resolution) == ("resolved", "value", "value")
        plan = uow.plans.get(console.plan.id)
        assert plan.what_matters == "Walking with my daughter."  # the browser's line end is not kept
        assert plan.goals[0].priority.codings[0].code == "high-priority"
        assert uow.sync.state(console.plan.id).status == "pending"  # no conflict left: queued for a push
    again = _resolve(http, console, coded_id, token, take="value", value=high)
    assert again.status_code == 409 and "already resolved" in again.text

"""The console on a phone (390 px) and on a desktop (1280 px), in headless Chromium, on SQLite and PostgreSQL:
plans with open conflicts listed first with their count in view and linking to the conflicts, a search by
plan id or MRN, no sideways scrolling of the page (wide tables scroll inside their own box), the notice of a
resolved conflict where the user is with the focus on it, `/docs` fit for a phone, and axe-core clean.

axe-core comes from npm (tests/e2e/axe, installed by scripts/setup.sh or by the fixture below) and is
injected with selenium; no browser is downloaded. Screenshots go to test-artifacts/ (not committed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as until
from selenium.webdriver.support.ui import WebDriverWait

from service.domain import codec
from service.domain.model import Plan
from service.store.uow import UnitOfWork
from tests.e2e.test_console import ARTIFACTS, KEY, Console, browser  # noqa: F401  (a fixture)
from tests.support import FIXTURES

AXE_DIR = Path(__file__).resolve().parent / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
WIDTHS = {"phone": (390, 844), "desktop": (1280, 1000)}


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's axe.min.js, installed from npm (package-lock.json in tests/e2e/axe) when missing."""
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("the console's accessibility checks need npm to install axe-core (tests/e2e/axe)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=AXE_DIR, check=True, timeout=300)
    return AXE_JS.read_text()


@pytest.fixture
def console(engine):
    """The console's fixture plan (an open conflict, a dead push, a dead delivery) and three more plans whose
    ids sort before it, none conflicted, one with a findable MRN."""
    served = Console(engine)
    template = json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text())
    now = datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        for n in range(3):
            plan = codec.from_dict(Plan, {**template, "id": f"aaa-plan-{n}"})
            plan.patient.mrn = f"MRN-55500{n}"
            plan.touch(now.isoformat())
            uow.plans.save(plan)
        uow.commit()
    yield served
    served.server.shutdown()


def at_width(driver, name: str) -> tuple[int, int]:
    width, height = WIDTHS[name]
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    return width, height


def axe_violations(driver, source: str) -> list[dict]:
    driver.set_script_timeout(30)
    driver.execute_script(source)
    found = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}})
          .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)}))))
          .catch(e => done([{id: 'axe-error', nodes: [String(e)]}]));
        """,
        WCAG,
    )
    return found


def page_scrolls_sideways(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth")


def in_view(driver, element) -> bool:
    box = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.right, r.bottom, window.innerWidth, window.innerHeight];",
        element,
    )
    left, top, right, bottom, width, height = box
    # within a pixel: layout is in fractions of a pixel, scrolling to an anchor in whole ones
    return left > -1 and right < width + 1 and top > -1 and bottom < height + 1 and right > left


def screenshot(driver, name: str, width: int, height: int) -> None:
    """A full-page screenshot at this width (the emulated viewport grown to the page's height)."""
    ARTIFACTS.mkdir(exist_ok=True)
    full = min(max(driver.execute_script("return document.documentElement.scrollHeight"), height), 8000)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": full, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    driver.save_screenshot(str(ARTIFACTS / name))
    at_width(driver, "phone" if width < 600 else "desktop")


def go(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def sign_in(driver, console: Console) -> None:
    driver.delete_all_cookies()
    go(driver, f"{console.url}/console/sign-in")
    driver.find_element(By.ID, "api_key").send_keys(KEY)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 10).until(until.url_matches(r"/console/$"))


@pytest.mark.parametrize("width", ["phone", "desktop"])
@pytest.mark.paired("database", "width", sqlite="phone", postgres="desktop")  # the layout is the browser's
def test_the_console_fits_a_phone_and_a_desktop_and_stays_accessible(console, browser, axe_source, request, width):  # noqa: F811
    backend = request.node.callspec.params["database"]
    w, h = at_width(browser, width)
    try:
        sign_in(browser, console)
        assert browser.execute_script("return window.innerWidth") == w

        # Plans: the conflicted plan first although its id sorts last, its open conflicts in view, as a link.
        listed = browser.find_elements(By.CSS_SELECTOR, "table.plans tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, "th .muted").text for r in listed] == [
            console.plan.id, "aaa-plan-0", "aaa-plan-1", "aaa-plan-2",
        ]  # fmt: skip
        link = browser.find_element(By.ID, f"conflicts-of-{console.plan.id}")
        assert link.text == "1 open conflict" and link.is_displayed() and in_view(browser, link)
        stacked = browser.execute_script("return getComputedStyle(arguments[0]).display", listed[0])
        assert stacked == ("block" if width == "phone" else "table-row")
        # The column's name stays beside the count: the header on a desktop, a label in the stacked row on a phone.
        label = browser.execute_script("return getComputedStyle(arguments[0].closest('td'), '::before').content", link)
        header = browser.find_element(By.XPATH, "//table[@class='plans']//th[.='Open conflicts']")
        if width == "phone":
            assert label == '"Open conflicts: "' and not header.is_displayed()
        else:
            assert label == "none" and header.is_displayed() and in_view(browser, header)
        assert not page_scrolls_sideways(browser)
        assert axe_violations(browser, axe_source) == []
        screenshot(browser, f"console-plans-{w}px-{backend}.png", w, h)

        # Search by MRN (exactly) and by a part of a plan id.
        browser.find_element(By.ID, "q").send_keys("mrn-555001")
        browser.find_element(By.CSS_SELECTOR, "form.filter button").click()
        WebDriverWait(browser, 10).until(until.url_contains("q=mrn-555001"))
        found = browser.find_elements(By.CSS_SELECTOR, "table.plans tbody tr th .muted")
        assert [f.text for f in found] == ["aaa-plan-1"]
        go(browser, f"{console.url}/console/?q=CARDIAC")
        assert [f.text for f in browser.find_elements(By.CSS_SELECTOR, "table.plans tbody tr th .muted")] == [
            console.plan.id
        ]
        go(browser, f"{console.url}/console/?q=nothing-like-this")
        assert "No plans matching “nothing-like-this”." in browser.find_element(By.CSS_SELECTOR, "table.plans").text

        # The count leads to the conflicts.
        go(browser, f"{console.url}/console/")
        browser.find_element(By.ID, f"conflicts-of-{console.plan.id}").click()
        WebDriverWait(browser, 10).until(until.url_contains(f"/console/plans/{console.plan.id}#conflicts"))
        assert in_view(browser, browser.find_element(By.ID, "conflicts"))

        # The plan page: wide tables scroll inside their own box, never the page.
        assert not page_scrolls_sideways(browser)
        for box_id in ("outbox-caption", "deliveries-caption"):
            box = browser.find_element(By.XPATH, f"//div[@class='table-scroll'][@aria-labelledby='{box_id}']")
            assert box.get_attribute("tabindex") == "0"
            overflows = browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", box)
            assert overflows == (width == "phone"), box_id
        assert axe_violations(browser, axe_source) == []
        screenshot(browser, f"console-plan-{w}px-{backend}.png", w, h)

        # Resolving: the notice is where the user is, and has the focus.
        browser.find_element(By.ID, f"conflict-{console.conflict_id}-ours").click()
        WebDriverWait(browser, 10).until(until.presence_of_element_located((By.ID, "notice")))
        notice = browser.find_element(By.ID, "notice")
        assert notice.text == f"Conflict {console.conflict_id} (what_matters) resolved: took ours."
        assert browser.switch_to.active_element == notice
        assert in_view(browser, notice)
        assert not browser.find_elements(By.CSS_SELECTOR, "main > .notice")  # not at the top of the page
        assert axe_violations(browser, axe_source) == []
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"console-resolved-{w}px-{backend}.png"))  # what the user sees

        # Skipping a dead delivery: the same, in the deliveries section.
        browser.find_element(By.ID, f"delivery-{console.delivery_id}-skip").click()
        WebDriverWait(browser, 10).until(until.text_to_be_present_in_element((By.ID, "notice"), "skipped"))
        notice = browser.find_element(By.ID, "notice")
        assert browser.switch_to.active_element == notice and in_view(browser, notice)
        with UnitOfWork(console.engine) as uow:
            assert uow.deliveries.get(console.delivery_id).status == "skipped"

        # /docs: a viewport tag, and nothing wider than a phone's screen.
        go(browser, f"{console.url}/docs")
        viewport = browser.find_element(By.CSS_SELECTOR, "meta[name='viewport']").get_attribute("content")
        assert viewport == "width=device-width, initial-scale=1"
        assert not page_scrolls_sideways(browser)
        assert axe_violations(browser, axe_source) == []
        # and the check can fail: a field without a label is a violation axe names
        browser.execute_script("document.querySelector('main').appendChild(document.createElement('input'))")
        assert "label" in {v["id"] for v in axe_violations(browser, axe_source)}
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

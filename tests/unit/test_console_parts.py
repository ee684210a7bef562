"""The console's pure parts: progress charts as SVG, the CSRF token check, sessions and MRN masking."""

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from decimal import Decimal

from service.console import chart, security
from service.domain import codec
from service.domain.model import CheckIn, Goal, Plan, Target
from service.domain.types import Concept, Quantity, Range
from tests.support import FIXTURES

SVG = "{http://www.w3.org/2000/svg}"


def _series(**overrides) -> chart.Series:
    values = {
        "title": "Progress: walk more",
        "measure": "Steps",
        "unit": "/d",
        "points": [
            chart.Point(datetime(2026, 9, 1, tzinfo=UTC), 1000.0, "1000"),
            chart.Point(datetime(2026, 10, 1, tzinfo=UTC), 3000.0, "3000"),
        ],
        "target_low": 4000.0,
        "target_high": None,
        "target_text": "≥ 4000 /d",
        "due": date(2026, 12, 1),
    }
    values.update(overrides)
    return chart.Series(**values)


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))


def test_the_chart_is_an_accessible_image_with_title_desc_and_axis_labels():
    root = _parse(chart.progress_svg(_series(), "c1"))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "c1-title c1-desc"
    assert root.find(f"{SVG}title").text == "Progress: walk more"
    desc = root.find(f"{SVG}desc").text
    assert "2 check-ins" in desc and "latest 3000 /d" in desc and "Target ≥ 4000 /d, due 2026-12-01" in desc
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-label"]
    assert labels == ["Date", "Steps (/d)"]


def test_points_are_scaled_into_the_plot_area_in_time_and_value_order():
    root = _parse(chart.progress_svg(_series(), "c1"))
    points = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(f"{SVG}circle")]
    assert len(points) == 2
    (x1, y1), (x2, y2) = points
    assert chart.LEFT == x1 < x2 < chart.WIDTH - chart.RIGHT  # the due date is later: the last point is not at the edge
    assert chart.TOP < y2 < y1 < chart.HEIGHT - chart.BOTTOM  # higher values are drawn higher
    low, high = chart.y_range(_series())
    assert low == 0.0 and high > 4000  # the target is on the chart
    expected_y = chart.HEIGHT - chart.BOTTOM - 1000 * (chart.HEIGHT - chart.BOTTOM - chart.TOP) / high
    assert abs(y1 - expected_y) < 0.1


def test_a_lower_bound_target_is_a_band_to_the_top_and_a_range_is_a_band_between_its_bounds():
    root = _parse(chart.progress_svg(_series(), "c1"))
    band = next(r for r in root.iter(f"{SVG}rect") if r.get("class") == "target-band")
    assert float(band.get("y")) == chart.TOP and float(band.get("height")) > 0
    assert any(t.text == "target ≥ 4000 /d" for t in root.iter(f"{SVG}text"))

    ranged = _parse(chart.progress_svg(_series(target_low=2000.0, target_high=2500.0, target_text="2000 to 2500"), "c"))
    band = next(r for r in ranged.iter(f"{SVG}rect") if r.get("class") == "target-band")
    lines = [ln for ln in ranged.iter(f"{SVG}line") if ln.get("class") == "target-line"]
    assert len(lines) == 2 and float(band.get("y")) > chart.TOP

    exact = _parse(chart.progress_svg(_series(target_low=2000.0, target_high=2000.0, target_text="2000"), "c"))
    assert not [r for r in exact.iter(f"{SVG}rect") if r.get("class") == "target-band"]
    assert len([ln for ln in exact.iter(f"{SVG}line") if ln.get("class") == "target-line"]) == 1


def test_the_due_date_is_marked_at_its_place_on_the_time_axis():
    root = _parse(chart.progress_svg(_series(), "c1"))
    due = next(ln for ln in root.iter(f"{SVG}line") if ln.get("class") == "due-line")
    assert float(due.get("x1")) == chart.WIDTH - chart.RIGHT  # the latest instant on the chart
    assert any(t.text == "due 2026-12-01" for t in root.iter(f"{SVG}text"))
    no_due = _parse(chart.progress_svg(_series(due=None), "c2"))
    assert not [ln for ln in no_due.iter(f"{SVG}line") if ln.get("class") == "due-line"]


def test_empty_data_still_makes_a_titled_image_and_one_point_does_not_divide_by_zero():
    root = _parse(chart.progress_svg(_series(points=[]), "c1"))
    assert root.find(f"{SVG}title") is not None and root.find(f"{SVG}desc").text == "No check-ins recorded yet."
    one = _series(points=[chart.Point(datetime(2026, 9, 1, tzinfo=UTC), 5.0, "5")], target_low=None, due=None)
    assert len(list(_parse(chart.progress_svg(one, "c")).iter(f"{SVG}circle"))) == 1
    assert chart.goal_series(Goal(id="g", description=Concept(text="x"))) is None


def test_text_in_the_chart_is_escaped():
    svg = str(chart.progress_svg(_series(title="<script>alert(1)</script>", measure="a & b"), "c"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a &amp; b" in svg
    _parse(svg)


def test_a_goal_with_check_ins_becomes_a_series_with_its_target_and_due_date():
    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text()))
    goal = next(g for g in plan.goals if g.check_ins)
    series = chart.goal_series(goal)
    assert series is not None and len(series.points) == len(goal.check_ins)
    assert [p.at for p in series.points] == sorted(p.at for p in series.points)
    assert series.target_low is not None and series.due is not None

    measure = Concept(text="Weight")
    ranged = Goal(
        id="g",
        description=Concept(text="Keep weight"),
        targets=[
            Target(measure=measure, range=Range(Quantity(Decimal(70), unit="kg"), Quantity(Decimal(75), unit="kg")))
        ],
        check_ins=[
            CheckIn(id="a", at="2026-09", measure=measure, quantity=Quantity(Decimal(80), unit="kg")),
            CheckIn(id="b", at="not a date", measure=measure, quantity=Quantity(Decimal(79), unit="kg")),
            CheckIn(id="c", at="2026-10-02", measure=measure, text="felt good"),
        ],
    )
    series = chart.goal_series(ranged)
    assert series is not None and [p.value for p in series.points] == [80.0]
    assert (series.target_low, series.target_high, series.due) == (70.0, 75.0, None)
    assert series.target_text == "70 to 75 kg"


def test_ticks_are_round_numbers():
    assert chart.nice_ticks(0, 6385) == [0, 2000, 4000, 6000]
    assert chart.nice_ticks(68.5, 81.5) == [70, 75, 80]


def test_the_csrf_token_check_needs_both_tokens_and_equality():
    token = security.new_token()
    assert len(token) >= 40 and token != security.new_token()
    assert security.token_matches(token, token)
    assert not security.token_matches(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not security.token_matches(token, None) and not security.token_matches(token, "")
    assert not security.token_matches(None, None) and not security.token_matches("", "")


def test_a_session_is_live_only_signed_in_unexpired_and_with_a_configured_key():
    fp = security.key_fingerprint("a-key-0123456789abcdef", b"secret")
    assert "a-key" not in fp and fp != security.key_fingerprint("a-key-0123456789abcdef", b"other")
    live = {"sid": "s", "exp": 2000.0, "kfp": fp, "csrf": "t"}
    assert security.session_is_live(live, {fp}, now=1000.0)
    assert not security.session_is_live(live, {fp}, now=2000.0)
    assert not security.session_is_live(live, set(), now=1000.0)  # the key was removed from the settings
    assert not security.session_is_live({"csrf": "t"}, {fp}, now=1000.0)
    assert not security.session_is_live({**live, "exp": "later"}, {fp}, now=1000.0)


def test_mrns_are_masked_to_a_prefix_and_their_last_three_characters():
    assert security.mask_mrn("MRN-800650") == "MRN-•••650"
    assert security.mask_mrn("123456789") == "•••789"
    assert security.mask_mrn("AB1234") == "AB•••"  # too short to show any of it
    assert security.mask_mrn("") == "•••" and security.mask_mrn(None) == "•••"
    assert not re.search(r"\d{4}", security.mask_mrn("MRN-1234567890"))


def test_the_console_settings_are_read_and_checked():
    import pytest

    from service.domain.errors import ConfigurationError
    from service.settings import Settings

    assert Settings.from_env({}).session_secret is None and Settings.from_env({}).console_show_names is False
    read = Settings.from_env({"PLANBRIDGE_SESSION_SECRET": "s" * 32, "PLANBRIDGE_CONSOLE_SHOW_NAMES": "true"})
    assert read.session_secret == "s" * 32 and read.console_show_names is True
    with pytest.raises(ConfigurationError):
        Settings.from_env({"PLANBRIDGE_SESSION_SECRET": "short"})
    with pytest.raises(ConfigurationError):
        Settings.from_env({"PLANBRIDGE_CONSOLE_SHOW_NAMES": "maybe"})


def test_only_console_paths_open_a_session():
    from flask import Flask, session
    from flask.sessions import NullSession

    app = Flask("t")
    security.configure(app, "s" * 32, "http://127.0.0.1")
    for path, has_session in (
        ("/console", True),
        ("/console/plans", True),
        ("/webhooks/team", False),
        ("/consoles", False),
        ("/plans/p1", False),
    ):
        with app.test_request_context(path):
            app.preprocess_request()
            assert (not isinstance(session, NullSession)) is has_session, path

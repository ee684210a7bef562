"""The console's pure parts: progress charts as SVG, the CSRF token check, sessions and MRN masking."""

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
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
    assert chart.LEFT < x1 < x2 < chart.WIDTH - chart.RIGHT  # padded: no point sits on an axis; the due date is later
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
    last = max(float(c.get("cx")) for c in root.iter(f"{SVG}circle"))
    padding = (chart.WIDTH - chart.RIGHT - chart.LEFT) * 0.05 / 1.1  # 5% of the span on each side
    assert last < float(due.get("x1")) and abs(float(due.get("x1")) - (chart.WIDTH - chart.RIGHT - padding)) < 0.2
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


# --- readability of the progress chart: axis titles, dated time axis, one point ---


def _texts(root: ET.Element, cls: str) -> list[ET.Element]:
    return [t for t in root.iter(f"{SVG}text") if cls in (t.get("class") or "").split()]


def test_the_value_axis_title_is_written_across_above_the_plot_and_never_clipped():
    long_measure = "Average daily steps this week, counted by the phone's pedometer and checked at every review"
    root = _parse(chart.progress_svg(_series(measure=long_measure, unit="steps/day"), "c"))
    title = next(t for t in _texts(root, "axis-label") if t.text != "Date")
    assert title.get("transform") is None  # across, not rotated into the plot's height
    assert float(title.get("x")) >= 0 and 12 <= float(title.get("y")) < chart.TOP
    assert len(title.text) <= chart.TITLE_CHARS and title.text.endswith("…")
    assert len(title.text) * 7 < chart.WIDTH  # 12px system font: about 7px a character at most
    short = next(t for t in _texts(_parse(chart.progress_svg(_series(), "c")), "axis-label") if t.text != "Date")
    assert short.text == "Steps (/d)"


def test_the_time_axis_labels_the_check_ins_days_when_few_and_round_dates_when_many():
    root = _parse(chart.progress_svg(_series(due=None), "c"))
    assert [t.text for t in _texts(root, "date-tick")] == ["1 Sep 2026", "1 Oct 2026"]
    xs = [float(t.get("x")) for t in _texts(root, "date-tick")]
    cxs = [float(c.get("cx")) for c in root.iter(f"{SVG}circle")]
    assert all(abs(x - cx) < 8 for x, cx in zip(xs, cxs, strict=True))  # each under its point
    weekly = [chart.Point(datetime(2026, 9, 1, tzinfo=UTC) + timedelta(days=7 * i), 1000.0 + i, "x") for i in range(12)]
    many = _parse(chart.progress_svg(_series(points=weekly, due=None), "c"))
    ticks = _texts(many, "date-tick")
    assert 2 <= len(ticks) <= 5 and all(t.text.startswith("1 ") for t in ticks)  # the first of months
    assert [float(t.get("x")) for t in ticks] == sorted(float(t.get("x")) for t in ticks)
    assert all(chart.LEFT <= float(t.get("x")) <= chart.WIDTH - chart.RIGHT for t in ticks)


def test_date_ticks_step_by_days_weeks_or_months():
    start, end = datetime(2026, 9, 1, 12, tzinfo=UTC), datetime(2026, 9, 4, tzinfo=UTC)
    assert chart.date_ticks(start, end) == [date(2026, 9, 2), date(2026, 9, 3), date(2026, 9, 4)]
    weeks = chart.date_ticks(datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC))
    assert weeks == [date(2026, 9, 1), date(2026, 9, 8), date(2026, 9, 15), date(2026, 9, 22), date(2026, 9, 29)]
    year = chart.date_ticks(datetime(2026, 1, 15, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC))
    assert year == [date(2026, 4, 1), date(2026, 7, 1), date(2026, 10, 1), date(2027, 1, 1)]
    assert chart.day_label(date(2026, 9, 3)) == "3 Sep 2026"


def test_a_single_check_in_is_a_marker_in_the_middle_on_a_real_scale_with_its_date():
    one = _series(points=[chart.Point(datetime(2026, 9, 1, tzinfo=UTC), 80.0, "80")], target_low=None, due=None)
    root = _parse(chart.progress_svg(one, "c"))
    (circle,) = list(root.iter(f"{SVG}circle"))
    assert float(circle.get("cx")) == (chart.LEFT + chart.WIDTH - chart.RIGHT) / 2
    assert float(circle.get("cy")) == (chart.TOP + chart.HEIGHT - chart.BOTTOM) / 2  # 0 to 160: mid-height
    assert not [p for p in root.iter(f"{SVG}path") if p.get("class") == "series"]  # no line of no length
    assert len(_texts(root, "tick")) - len(_texts(root, "date-tick")) >= 3  # value ticks: a scale, not one value
    assert [t.text for t in _texts(root, "date-tick")] == ["1 Sep 2026"]
    assert chart.y_range(one) == (0.0, 160.0)


# --- plain-language labels ---


def test_codes_read_as_plain_words_and_keep_the_fhir_code_beside_them():
    from service.console import labels
    from service.domain.model import GOAL_ACHIEVEMENT_STATUSES, GOAL_LIFECYCLE_STATUSES, GOAL_PRIORITIES, STEP_STATUSES
    from service.domain.types import Coding

    for kind, codes in (
        ("goal_status", GOAL_LIFECYCLE_STATUSES),
        ("achievement", GOAL_ACHIEVEMENT_STATUSES),
        ("priority", GOAL_PRIORITIES),
        ("step_status", STEP_STATUSES),
    ):
        for code in codes:  # every code FHIR has gets words of its own, never the bare code
            shown = labels.label(kind, code)
            assert shown.known and shown.code == code and "-" not in shown.text.replace("e-m", ""), (kind, code)
    assert labels.label("goal_status", "active") == labels.Label("Being worked on", "active")
    assert labels.label("step_status", "someday") == labels.Label("someday", "someday")  # unknown: as it is
    assert not labels.label("step_status", "someday").known and labels.label("priority", None).text == "not recorded"
    system = "http://terminology.hl7.org/CodeSystem/goal-priority"
    high = Concept(codings=[Coding(system=system, code="high-priority", display="High Priority")])
    assert labels.concept_label("priority", high) == labels.Label("High", "high-priority")
    local = Concept(codings=[Coding(system="http://example.org/p", code="high-priority", display="Urgent")])
    assert labels.concept_label("priority", local) == labels.Label("Urgent")  # another system's code: its words
    assert labels.concept_label("achievement", None, "not recorded").text == "not recorded"


# --- GBO chart and GAS summary ---

GBO_GOAL = {
    "goal_id": "g-school",
    "scale": "gbo",
    "baseline": 3,
    "latest": 7,
    "change": 4,
    "reliable_change": "improved",
    "ratings": [
        {"id": "r3", "score": 7, "occasion": "review", "rated_by": "nurse", "at": "2026-11-24T10:00:00Z", "note": "ok"},
        {"id": "r1", "score": 3, "occasion": "baseline", "rated_by": "patient", "at": "2026-09-01T10:00:00Z"},
        {"id": "r2", "score": 5, "occasion": "review", "rated_by": "patient", "at": "2026-10-13T10:00:00Z"},
        {"id": "bad", "score": 5, "occasion": "review", "rated_by": "patient", "at": "no date"},
    ],
}


def _gbo(**overrides):
    from service.console import outcomes_chart

    goal = {**GBO_GOAL, **overrides}
    return outcomes_chart.gbo_chart(goal, "Back to school <2 days>", 2.45, {"patient": "the patient"})


def test_a_gbo_chart_shows_baseline_each_rating_and_the_reliable_change_band():
    from service.console import outcomes_chart

    data = _gbo()
    assert [r.score for r in data.ratings] == [3, 5, 7] and data.baseline == 3  # in time order, undated left out
    root = _parse(outcomes_chart.gbo_svg(data, "gbo-1"))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "gbo-1-title gbo-1-desc"
    assert root.find(f"{SVG}title").text == "Goal-based outcome: Back to school <2 days>"
    desc = root.find(f"{SVG}desc").text
    assert "3 ratings" in desc and "first 3, latest 7" in desc and "0.55 to 5.45" in desc
    assert "+4, beyond ±2.45: a reliable improvement" in desc

    y0, y1 = chart.HEIGHT - chart.BOTTOM, chart.TOP

    def sy(value: float) -> float:
        return y0 + value * (y1 - y0) / 10

    band = next(r for r in root.iter(f"{SVG}rect") if r.get("class") == "rc-band")
    assert abs(float(band.get("y")) - sy(5.45)) < 0.1 and abs(float(band.get("height")) - (sy(0.55) - sy(5.45))) < 0.2
    baseline = next(ln for ln in root.iter(f"{SVG}line") if ln.get("class") == "baseline-line")
    assert abs(float(baseline.get("y1")) - sy(3)) < 0.1
    (first,) = [r for r in root.iter(f"{SVG}rect") if "baseline-point" in (r.get("class") or "")]
    reviews = [c for c in root.iter(f"{SVG}circle")]
    assert [round(float(c.get("cy")), 1) for c in reviews] == [round(sy(5), 1), round(sy(7), 1)]
    assert float(first.get("x")) + 5 < float(reviews[0].get("cx")) < float(reviews[1].get("cx"))
    assert [t.text for t in _texts(root, "date-tick")] == ["1 Sep 2026", "13 Oct 2026", "24 Nov 2026"]
    assert [t.text for t in _texts(root, "tick") if "date-tick" not in t.get("class")] == [
        "0",
        "2",
        "4",
        "6",
        "8",
        "10",
    ]
    assert "&lt;2 days&gt;" in str(outcomes_chart.gbo_svg(data, "gbo-1"))


def test_a_band_reaching_past_the_scale_is_cut_at_0_and_10_and_a_small_change_is_not_reliable():
    from service.console import outcomes_chart

    near_top = outcomes_chart.gbo_chart(
        {
            **GBO_GOAL,
            "baseline": 9,
            "ratings": [{**r, "score": 9 if r["id"] == "r1" else 10} for r in GBO_GOAL["ratings"]],
        },
        "g",
        2.45,
    )
    root = _parse(outcomes_chart.gbo_svg(near_top, "g"))
    band = next(r for r in root.iter(f"{SVG}rect") if r.get("class") == "rc-band")
    assert float(band.get("y")) == chart.TOP  # 10, not 11.45
    assert outcomes_chart.change_words(near_top) == "Change from baseline: +1, within ±2.45: not a reliable change."
    later = {"score": 0, "occasion": "review", "rated_by": "x", "at": "2026-12-01"}
    worse = outcomes_chart.gbo_chart({**GBO_GOAL, "ratings": [GBO_GOAL["ratings"][1], later]}, "g", 2.45)
    assert outcomes_chart.change_words(worse).endswith(f"{MINUS}3, beyond ±2.45: a reliable deterioration.")
    no_threshold = outcomes_chart.gbo_chart(GBO_GOAL, "g", None)
    assert not [
        r for r in _parse(outcomes_chart.gbo_svg(no_threshold, "g")).iter(f"{SVG}rect") if r.get("class") == "rc-band"
    ]


def test_one_gbo_rating_is_drawn_in_the_middle_and_none_is_a_titled_image():
    from service.console import outcomes_chart

    one = _gbo(ratings=GBO_GOAL["ratings"][1:2])
    root = _parse(outcomes_chart.gbo_svg(one, "g"))
    (point,) = [r for r in root.iter(f"{SVG}rect") if "baseline-point" in (r.get("class") or "")]
    assert float(point.get("x")) + 5 == (chart.LEFT + chart.WIDTH - chart.RIGHT) / 2
    assert not list(root.iter(f"{SVG}path")) and outcomes_chart.change_words(one) == "Baseline 3; no rating since."
    empty = _parse(outcomes_chart.gbo_svg(_gbo(ratings=[], baseline=None), "g"))
    assert empty.find(f"{SVG}desc").text == "No ratings recorded yet."


def test_the_gbo_table_has_a_caption_headers_and_each_ratings_change_from_baseline():
    from service.console import outcomes_chart

    table = ET.fromstring(str(outcomes_chart.gbo_table(_gbo(), "t1")))
    caption = table.find("caption")
    assert caption.get("id") == "t1-caption" and caption.text.startswith("Goal-based outcome ratings: Back to school")
    assert [th.get("scope") for th in table.iter("th")][:6] == ["col"] * 6
    rows = [[cell.text or "" for cell in tr] for tr in table.find("tbody")]
    assert rows == [
        ["1 Sep 2026", "Baseline", "3", "—", "the patient", ""],
        ["13 Oct 2026", "Review", "5", "+2", "the patient", ""],
        ["24 Nov 2026", "Review", "7", "+4", "nurse", "ok"],
    ]
    assert all(tr[0].tag == "th" and tr[0].get("scope") == "row" for tr in table.find("tbody"))


def _gas_entry(goal_id: str, *levels: int) -> dict:
    ratings = [
        {"id": f"{goal_id}-{n}", "scale": "gas", "score": x, "occasion": "review", "rated_by": "physio", "at": at}
        for n, (x, at) in enumerate(zip(levels, ("2026-09-01", "2026-11-01T09:00:00Z"), strict=False))
    ]
    latest = levels[-1] if levels else None
    return {"goal_id": goal_id, "scale": "gas", "baseline": levels[0], "latest": latest, "ratings": ratings}


GAS = {
    "plan_id": "p",
    "goals": [
        _gas_entry("a", -1, 1),
        {**GBO_GOAL, "goal_id": "a"},  # the same goal on GBO: not in the GAS summary
        _gas_entry("b", -1),
        {"goal_id": "c", "scale": "gas", "baseline": 0, "latest": 7, "ratings": []},  # out of range: no level drawn
    ],
    "gas": {"t_score": 55.21, "goals": 3, "weights": {"a": 2.0, "b": 1.0, "c": 1.0}},
}
MINUS = "\u2212"


def test_the_gas_summary_marks_each_goals_latest_level_with_what_it_means_and_the_t_score():
    from service.console import outcomes_chart

    goals = outcomes_chart.gas_goals(
        GAS, {"a": "Walk to the shop", "b": "Stairs"}, {"a": {"1": "there and back twice"}}
    )
    assert [(g.goal, g.level, g.meaning, g.weight) for g in goals] == [
        ("Walk to the shop", 1, "there and back twice", 2.0),
        ("Stairs", -1, "somewhat less than expected", 1.0),  # no description given: the scale's words
        ("c", None, "not rated yet", 1.0),
    ]
    assert outcomes_chart.gas_goals({"goals": [], "gas": None}, {}, {}) == []
    t_score = outcomes_chart.t_score_of(GAS)
    root = _parse(outcomes_chart.gas_svg(goals, t_score, "gas"))
    assert root.get("role") == "img" and root.get("aria-labelledby") == "gas-title gas-desc"
    assert "GAS T-score 55.2" in root.find(f"{SVG}desc").text and f"Stairs: {MINUS}1" in root.find(f"{SVG}desc").text
    marks = [c for c in root.iter(f"{SVG}circle")]
    assert len(marks) == 2
    zero = next(float(t.get("x")) for t in _texts(root, "tick") if t.text == "0")
    plus1 = next(float(t.get("x")) for t in _texts(root, "tick") if t.text == "+1")
    assert float(marks[0].get("cx")) == plus1 and float(marks[1].get("cx")) == 2 * zero - plus1
    assert float(marks[0].get("cy")) < float(marks[1].get("cy"))  # a row per goal, in order
    table = ET.fromstring(str(outcomes_chart.gas_table(goals, t_score, "gt")))
    assert "GAS T-score 55.2" in table.find("caption").text
    rows = [[cell.text or "" for cell in tr] for tr in table.find("tbody")]
    assert rows[0] == ["Walk to the shop", "+1", "there and back twice", "1 Nov 2026", "2"]
    assert rows[1][:4] == ["Stairs", f"{MINUS}1", "somewhat less than expected", "1 Sep 2026"] and rows[2][1] == "—"
    assert outcomes_chart.t_score_words(None).startswith("No GAS T-score yet")


# --- the console's conflict helpers ---


def test_a_conflicts_ehr_side_is_the_resource_holding_its_path_and_its_value_is_text_or_json():
    from service.console import views

    links = {
        "careplan": "CP",
        "careteam": "CT",
        "goal:g-1": "G1",
        "observation:g-1/c-1": "O1",
        "checkin:c-1": "not a key links use",
    }
    assert views.ehr_side("goals[id=g-1].lifecycle_status", links) == "G1"
    assert views.ehr_side("goals[id=g-1].check_ins[id=c-1].note", links) == "O1"
    assert views.ehr_side("goals[id=g-2].priority", links) == "CP"  # not on the server yet: the plan
    assert views.ehr_side("team[id=m-1]", links) == "CT" and views.ehr_side("what_matters", links) == "CP"
    assert views.ehr_side("what_matters", {}) is None
    assert views.value_kind({"ours": "a", "theirs": None}) == "text"
    assert views.value_kind({"ours": 3, "theirs": [1]}) == "json"
    assert views._typed_value(" Walk the dog\r\nat six\r\n", "text") == "Walk the dog\nat six"
    assert views._typed_value('{"a": [1, 2]}', "json") == {"a": [1, 2]}
    for text, kind, words in (("  ", "text", "enter the value"), ("{a:", "json", "not JSON: Expecting property name")):
        try:
            views._typed_value(text, kind)
        except ValueError as refused:
            assert words in str(refused)
        else:
            raise AssertionError(text)


def test_a_timeline_entry_says_when_from_whom_and_what_changed_in_words():
    from service.console import views

    plan = codec.from_dict(Plan, json.loads((FIXTURES / "plans" / "cardiac-rehab-checkins.json").read_text()))
    goal = plan.goals[0]
    words = chart.concept_text(goal.description)
    names = {"patient": "the patient", "nurse": "Nurse Lee"}
    team = {
        "sequence": 4,
        "at": "2026-11-22T09:30:00.123456Z",
        "plan_version": 3,
        "source": "team",
        "event_type": "goal.status_changed",
        "paths": [f"goals[id={goal.id}].lifecycle_status", f"goals[id={goal.id}].status_reason", "what_matters"],
        "paths_total": 5,
        "team": {"sender": "dietetics", "event_id": "msg_1", "members": ["nurse"]},
        "ehr": None,
    }
    shown = views._timeline_entry(plan, team, names)
    assert (shown["at"], shown["what"], shown["who"]) == (
        "2026-11-22 09:30 UTC",
        "Goal status changed",
        "the team, through dietetics (Nurse Lee)",
    )
    assert shown["paths"] == [f"goal “{words}”: lifecycle status, status reason", "what matters"]
    assert shown["more"] == 2
    ehr = {
        **team,
        "source": "ehr",
        "event_type": "ehr.plan_changed",
        "paths": ["*"],
        "paths_total": 1,
        "team": None,
        "ehr": {"resource_type": "Goal", "resource_id": "12", "resource_version": "3", "outcome": "merged"},
    }
    shown = views._timeline_entry(plan, ehr, names)
    assert shown["who"] == "the EHR: Goal/12 version 3, merged" and shown["paths"] == ["the whole plan"]
    assert shown["what"] == "EHR plan changed"

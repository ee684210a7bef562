"""Outcome charts as accessible inline SVG with their data tables: a Goal-Based Outcomes (GBO) chart per
goal and a Goal Attainment Scaling (GAS) summary.

Pure functions over the outcome summary's plain data (`service.services.outcomes.summarize`):
- a GBO goal: {"goal_id", "scale": "gbo", "baseline", "latest", "change", "reliable_change",
  "ratings": [{"id", "score", "occasion", "rated_by", "at", "note"}, ...]} and the plan's reliable-change
  threshold ({"gbo": 2.45, "source": ...}); the chart shows 0-10, the baseline and each rating after it,
  and the reliable-change band around the baseline, shaded;
- the GAS part: the goals rated on GAS (entries with "scale": "gas", their "latest" level -2..+2) and
  {"gas": {"t_score", "weights"}}, with each goal's words and level descriptions.
Every chart has role="img", a <title> and a <desc> naming what it shows, and the same data as a table
(caption, column and row headers) so nothing is only in the picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from markupsafe import Markup, escape

from service.console import chart
from service.console.chart import HEIGHT, LEFT, RIGHT, TOP, WIDTH, _f, _scale
from service.console.labels import OCCASION

GBO_LOW, GBO_HIGH = 0, 10
MINUS = "\u2212"  # a real minus sign, as printed numbers have
GAS_WORDS = {
    -2: "much less than expected",
    -1: "somewhat less than expected",
    0: "as expected",
    1: "somewhat more than expected",
    2: "much more than expected",
}


@dataclass(frozen=True)
class Rating:
    """One rating on a chart: when, the score, at which occasion, by whom, and a note."""

    at: datetime
    score: int
    occasion: str
    rated_by: str
    note: str = ""


@dataclass(frozen=True)
class GboChart:
    """What a goal's GBO chart shows: the goal's words, its ratings in time order, the baseline and the
    reliable-change threshold (None when the plan has none)."""

    goal_id: str
    goal: str
    ratings: list[Rating] = field(default_factory=list)
    baseline: int | None = None
    threshold: float | None = None
    reliable_change: Any = None


def signed(value: float | None) -> str:
    """A change as a signed number: "+4", "0", and negative numbers with a real minus sign."""
    if value is None:
        return "—"
    text = chart.number(abs(value))
    return f"+{text}" if value > 0 else f"{MINUS}{text}" if value < 0 else "0"


def _score(value: Any) -> int | None:
    """A summary's baseline or latest: a number, or a rating (its score), or nothing."""
    if isinstance(value, Mapping):
        value = value.get("score")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gbo_chart(
    summary_goal: Mapping[str, Any],
    goal_words: str,
    threshold: float | None,
    names: Mapping[str, str] | None = None,
) -> GboChart:
    """Return a GBO goal's chart data from its summary entry; ratings without a readable instant are left
    out (they cannot be placed in time), the rest sorted by time; `names` turns member ids into words."""
    names = names or {}
    ratings = []
    for r in summary_goal.get("ratings") or []:
        at = chart.parse_instant(str(r.get("at") or ""))
        score = _score(r.get("score"))
        if at is None or score is None:
            continue
        who = str(r.get("rated_by") or "")
        ratings.append(Rating(at, score, str(r.get("occasion") or ""), names.get(who, who), str(r.get("note") or "")))
    ratings.sort(key=lambda r: r.at)
    baseline = _score(summary_goal.get("baseline"))
    if baseline is None:
        baseline = next((r.score for r in ratings if r.occasion == "baseline"), None)
    return GboChart(
        goal_id=str(summary_goal.get("goal_id") or ""),
        goal=goal_words,
        ratings=ratings,
        baseline=baseline,
        threshold=float(threshold) if isinstance(threshold, int | float) and threshold > 0 else None,
        reliable_change=summary_goal.get("reliable_change"),
    )


def change_words(data: GboChart) -> str:
    """The latest change from baseline in words, and whether it is beyond the reliable-change band."""
    if data.baseline is None or not data.ratings:
        return "No baseline rating yet."
    latest = data.ratings[-1]
    change = latest.score - data.baseline
    if len(data.ratings) == 1 or (latest.occasion == "baseline" and change == 0):
        return f"Baseline {data.baseline}; no rating since."
    words = f"Change from baseline: {signed(change)}"
    if data.threshold is None:
        return words + "."
    if abs(change) >= data.threshold:
        kind = "improvement" if change > 0 else "deterioration"
        return words + f", beyond ±{chart.number(data.threshold)}: a reliable {kind}."
    return words + f", within ±{chart.number(data.threshold)}: not a reliable change."


def describe_gbo(data: GboChart) -> str:
    """The GBO chart's <desc>: the ratings from first to latest, the baseline, the band and the change."""
    if not data.ratings:
        return "No ratings recorded yet."
    first, last = data.ratings[0], data.ratings[-1]
    n = len(data.ratings)
    words = (
        f"{n} rating{'s' if n != 1 else ''} on the goal-based outcome scale (0 to 10, 10 = goal reached) "
        f"from {chart.day_label(first.at.date())} to {chart.day_label(last.at.date())}: "
        f"first {first.score}, latest {last.score}."
    )
    if data.baseline is not None and data.threshold is not None:
        low, high = data.baseline - data.threshold, data.baseline + data.threshold
        words += (
            f" Shaded: the reliable-change band around the baseline {data.baseline}, "
            f"{chart.number(max(low, GBO_LOW))} to {chart.number(min(high, GBO_HIGH))}."
        )
    return f"{words} {change_words(data)}"


def _head(kind: str, cid: str, title: str, desc: str, height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" aria-labelledby="{cid}-title {cid}-desc">'
        f'<title id="{cid}-title">{escape(title)}</title><desc id="{cid}-desc">{escape(desc)}</desc>'
    )


def gbo_svg(data: GboChart, chart_id: str) -> Markup:
    """Return a goal's GBO chart: a 0-10 value axis, dated time axis, the reliable-change band around the
    baseline (shaded, with the baseline as a dashed line), and each rating as a marker, joined in time order."""
    cid = str(escape(chart_id))
    head = _head("gbo", cid, f"Goal-based outcome: {data.goal}", describe_gbo(data))
    if not data.ratings:
        return Markup(  # noqa: S704 -- every text in it went through escape()
            f'{head}<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" class="axis-label">'
            "No ratings yet</text></svg>"
        )
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - chart.BOTTOM, TOP
    start, end = chart.time_range([r.at for r in data.ratings])

    def sx(at: datetime) -> float:
        return _scale(at.timestamp(), start.timestamp(), end.timestamp(), x0, x1)

    def sy(value: float) -> float:
        return _scale(value, GBO_LOW, GBO_HIGH, y0, y1)

    parts = [head]
    if data.baseline is not None and data.threshold is not None:
        low = max(data.baseline - data.threshold, GBO_LOW)
        high = min(data.baseline + data.threshold, GBO_HIGH)
        parts.append(
            f'<rect class="rc-band" x="{x0}" y="{_f(sy(high))}" width="{x1 - x0}" height="{_f(sy(low) - sy(high))}">'
            f"<title>Reliable-change band: {chart.number(low)} to {chart.number(high)}</title></rect>"
            f'<text class="band-label" x="{x0 + 6}" y="{_f(sy(high) + 14)}" text-anchor="start">'
            f"reliable-change band (±{chart.number(data.threshold)})</text>"
        )
    parts += chart.axes(
        start,
        end,
        GBO_LOW,
        GBO_HIGH,
        "Rating (0 = not at all, 10 = goal reached)",
        [r.at.date() for r in data.ratings],
        y_ticks=[0, 2, 4, 6, 8, 10],
    )
    if data.baseline is not None:
        y = sy(data.baseline)
        above = data.baseline < 9  # the words go where there is room: above the line, or under it near the top
        parts.append(
            f'<line class="baseline-line" x1="{x0}" x2="{x1}" y1="{_f(y)}" y2="{_f(y)}"/>'
            f'<text class="baseline-label" x="{x1 - 4}" y="{_f(y - 6 if above else y + 16)}" text-anchor="end">'
            f"baseline {data.baseline}</text>"
        )
    if len(data.ratings) > 1:
        path = " ".join(f"{'L' if i else 'M'}{_f(sx(r.at))},{_f(sy(r.score))}" for i, r in enumerate(data.ratings))
        parts.append(f'<path class="series" d="{path}"/>')
    for r in data.ratings:
        occasion = OCCASION.get(r.occasion, r.occasion)
        shape = (
            f'<rect class="point baseline-point" x="{_f(sx(r.at) - 5)}" y="{_f(sy(r.score) - 5)}" '
            'width="10" height="10">'
            if r.occasion == "baseline"
            else f'<circle class="point" cx="{_f(sx(r.at))}" cy="{_f(sy(r.score))}" r="5">'
        )
        close = "</rect>" if r.occasion == "baseline" else "</circle>"
        parts.append(
            f"{shape}<title>{chart.day_label(r.at.date())} ({escape(occasion)}): {r.score}</title>{close}"
            f'<text class="point-label" x="{_f(sx(r.at))}" y="{_f(sy(r.score) - 10)}" text-anchor="middle">'
            f"{r.score}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- every text in it went through escape()


def gbo_table(data: GboChart, table_id: str) -> Markup:
    """Return the GBO chart's data as a table: each rating's date, occasion, score, change from baseline,
    who rated it and the note; the caption names the goal and the change in words."""
    tid = escape(table_id)
    rows = []
    for r in data.ratings:
        change = signed(r.score - data.baseline) if data.baseline is not None and r.occasion != "baseline" else "—"
        rows.append(
            f'<tr><th scope="row">{chart.day_label(r.at.date())}</th>'
            f"<td>{escape(OCCASION.get(r.occasion, r.occasion))}</td><td>{r.score}</td><td>{change}</td>"
            f"<td>{escape(r.rated_by or '—')}</td><td>{escape(r.note)}</td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="6">No ratings yet.</td></tr>')
    return Markup(  # noqa: S704 -- every text in it went through escape()
        f'<table class="gbo-table" id="{tid}"><caption id="{tid}-caption">Goal-based outcome ratings: '
        f"{escape(data.goal)}. {escape(change_words(data))}</caption>"
        '<thead><tr><th scope="col">Date</th><th scope="col">Occasion</th><th scope="col">Rating (0 to 10)</th>'
        '<th scope="col">Change from baseline</th><th scope="col">Rated by</th><th scope="col">Note</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


@dataclass(frozen=True)
class GasGoal:
    """One goal in the GAS summary: its words, latest level (None when not rated), what the level means for
    this goal, and its weight."""

    goal_id: str
    goal: str
    level: int | None
    meaning: str
    weight: float
    rated_at: date | None = None


def gas_goals(
    summary: Mapping[str, Any],
    words: Mapping[str, str],
    levels: Mapping[str, Mapping[str, str]],
) -> list[GasGoal]:
    """Return the goals rated on GAS, in the summary's order: each one's latest level (its summary entry's
    `latest`), when that was rated (its last rating's `at`), the goal's words (`words`: goal id -> words),
    what the level means for it (`levels`: goal id -> its `gas_levels`, "-2".."2") and its weight
    (`summary["gas"]["weights"]`, 1 when absent)."""
    gas = summary.get("gas") or {}
    weights = gas.get("weights") or {}
    out = []
    for entry in summary.get("goals") or []:
        if entry.get("scale") != "gas":
            continue
        goal_id = str(entry.get("goal_id") or "")
        latest = entry.get("latest")
        level = int(latest) if isinstance(latest, int) and not isinstance(latest, bool) and -2 <= latest <= 2 else None
        ratings = entry.get("ratings") or []
        stamp = chart.parse_instant(str(ratings[-1].get("at") or "")) if ratings else None
        weight = weights.get(goal_id)
        meaning = (levels.get(goal_id) or {}).get(str(level), "") if level is not None else ""
        out.append(
            GasGoal(
                goal_id=goal_id,
                goal=words.get(goal_id, goal_id),
                level=level,
                meaning=meaning or (GAS_WORDS[level] if level is not None else "not rated yet"),
                weight=float(weight) if isinstance(weight, int | float) else 1.0,
                rated_at=stamp.date() if stamp else None,
            )
        )
    return out


def t_score_words(t_score: Any) -> str:
    """The GAS T-score in words (50 = every goal met as expected; 10 points is one standard deviation)."""
    if not isinstance(t_score, int | float) or isinstance(t_score, bool):
        return "No GAS T-score yet: no goal has a GAS rating."
    return f"GAS T-score {t_score:.1f} (50 = goals met as expected; above 50, better than expected)."


def t_score_short(t_score: Any) -> str:
    """The T-score as the chart heads it (the table's caption and the chart's description say more)."""
    if not isinstance(t_score, int | float) or isinstance(t_score, bool):
        return "No GAS T-score yet"
    return f"GAS T-score {t_score:.1f} (50 = as expected)"


def t_score_of(summary: Mapping[str, Any]) -> Any:
    """The summary's GAS T-score (None when no goal is rated on GAS)."""
    return (summary.get("gas") or {}).get("t_score")


GAS_ROW, GAS_TOP, GAS_LABEL_WIDTH = 44, 56, 196


def gas_svg(goals: list[GasGoal], t_score: Any, chart_id: str) -> Markup:
    """Return the GAS summary chart: a row per goal with its latest level marked on the -2..+2 scale
    (0 = as expected, shaded), and the T-score above."""
    cid = str(escape(chart_id))
    height = GAS_TOP + GAS_ROW * max(len(goals), 1) + 44
    rated = [g for g in goals if g.level is not None]
    desc = t_score_words(t_score) + " " + " ".join(f"{g.goal}: {signed(g.level)} ({g.meaning})." for g in rated)
    parts = [_head("gas", cid, "Goal attainment scaling: latest level of each goal", desc.strip(), height)]
    x0, x1 = GAS_LABEL_WIDTH, WIDTH - RIGHT

    def sx(level: float) -> float:
        return _scale(level, -2.5, 2.5, x0, x1)

    bottom = GAS_TOP + GAS_ROW * max(len(goals), 1)
    parts.append(
        f'<text class="t-score" x="8" y="22" text-anchor="start">{escape(t_score_short(t_score))}</text>'
        f'<rect class="expected-band" x="{_f(sx(-0.5))}" y="{GAS_TOP - 8}" width="{_f(sx(0.5) - sx(-0.5))}" '
        f'height="{bottom - GAS_TOP + 8}"><title>0: as expected</title></rect>'
    )
    for level in range(-2, 3):
        parts.append(
            f'<line class="grid" x1="{_f(sx(level))}" x2="{_f(sx(level))}" y1="{GAS_TOP - 8}" y2="{bottom}"/>'
            f'<text class="tick" x="{_f(sx(level))}" y="{GAS_TOP - 14}" text-anchor="middle">{signed(level)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{x0}" x2="{x1}" y1="{bottom}" y2="{bottom}"/>'
        f'<text class="tick" x="{_f(sx(-1.5))}" y="{bottom + 18}" text-anchor="middle">less than expected</text>'
        f'<text class="tick" x="{_f(sx(1.5))}" y="{bottom + 18}" text-anchor="middle">more than expected</text>'
        f'<text class="axis-label" x="{(x0 + x1) // 2}" y="{bottom + 36}" text-anchor="middle">'
        "Latest GAS level</text>"
    )
    for i, g in enumerate(goals):
        y = GAS_TOP + GAS_ROW * i + GAS_ROW / 2
        parts.append(
            f'<text class="row-label" x="8" y="{_f(y + 4)}" text-anchor="start">'
            f"{escape(chart.fitted(g.goal, 28))}</text>"
        )
        if g.level is None:
            parts.append(
                f'<text class="tick" x="{_f(sx(0))}" y="{_f(y + 4)}" text-anchor="middle">not rated yet</text>'
            )
            continue
        parts.append(
            f'<circle class="point gas-level" cx="{_f(sx(g.level))}" cy="{_f(y)}" r="8">'
            f"<title>{escape(g.goal)}: {signed(g.level)}, {escape(g.meaning)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- every text in it went through escape()


def gas_table(goals: list[GasGoal], t_score: Any, table_id: str) -> Markup:
    """Return the GAS summary as a table: each goal's latest level, what that level means for the goal,
    when it was rated and its weight; the caption gives the T-score."""
    tid = escape(table_id)
    rows = [
        f'<tr><th scope="row">{escape(g.goal)}</th><td>{signed(g.level) if g.level is not None else "—"}</td>'
        f"<td>{escape(g.meaning)}</td><td>{chart.day_label(g.rated_at) if g.rated_at else '—'}</td>"
        f"<td>{chart.number(g.weight)}</td></tr>"
        for g in goals
    ] or ['<tr><td colspan="5">No goal is scaled for GAS.</td></tr>']
    return Markup(  # noqa: S704 -- every text in it went through escape()
        f'<table class="gas-table" id="{tid}"><caption id="{tid}-caption">Goal attainment scaling. '
        f"{escape(t_score_words(t_score))}</caption>"
        f'<thead><tr><th scope="col">Goal</th><th scope="col">Latest level ({MINUS}2 to +2)</th>'
        '<th scope="col">What that level means</th><th scope="col">Rated</th><th scope="col">Weight</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )

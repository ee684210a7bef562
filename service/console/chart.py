"""Progress charts as accessible inline SVG: check-ins over time against the target and its due date.

Pure functions: `goal_series` reads what a goal holds, `progress_svg` draws it. The SVG carries a
<title> and <desc>, axis labels, the target (a line for a value, a band for a range or a bound) and
the due date; the page shows the same points as a table.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from markupsafe import Markup, escape

from service.domain.instants import parse_instant
from service.domain.model import Goal, Target
from service.domain.types import Concept, Quantity

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 28, 36, 52


@dataclass(frozen=True)
class Point:
    """One check-in on the chart: when, the value, and who recorded it."""

    at: datetime
    value: float
    label: str
    recorded_by: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Series:
    """What a goal's chart shows: its points, the unit, the target bounds and the due date."""

    title: str
    measure: str
    unit: str
    points: list[Point] = field(default_factory=list)
    target_low: float | None = None
    target_high: float | None = None
    target_text: str | None = None
    due: date | None = None


def concept_text(concept: Concept | None) -> str:
    """Return the words of a concept: its text, else the first coding's display or code."""
    if concept is None:
        return ""
    if concept.text:
        return concept.text
    for coding in concept.codings:
        if coding.display or coding.code:
            return coding.display or coding.code or ""
    return ""


def number(value: float | Decimal | int | None) -> str:
    """Format a number without a trailing .0 (6000, 5.5)."""
    if value is None:
        return ""
    as_float = float(value)
    return str(int(as_float)) if as_float == int(as_float) else f"{as_float:.4g}"


def quantity_text(q: Quantity | None) -> str:
    """Return a quantity as words: "≥ 6000 /d"."""
    if q is None or q.value is None:
        return ""
    comparator = {">=": "≥", "<=": "≤"}.get(q.comparator or "", q.comparator or "")
    return " ".join(part for part in (comparator, number(q.value), q.unit or q.code or "") if part)


def target_bounds(target: Target) -> tuple[float | None, float | None, str | None]:
    """Return (low, high, words) of a numeric target; (None, None, None) when it is not numeric."""
    if target.quantity is not None and target.quantity.value is not None:
        value = float(target.quantity.value)
        comparator = target.quantity.comparator
        low = value if comparator in (None, ">=", ">") else None
        high = value if comparator in (None, "<=", "<") else None
        return low, high, quantity_text(target.quantity)
    if target.range is not None:
        low_q, high_q = target.range.low, target.range.high
        low = float(low_q.value) if low_q and low_q.value is not None else None
        high = float(high_q.value) if high_q and high_q.value is not None else None
        if low is None and high is None:
            return None, None, None
        unit = (high_q or low_q).unit if (high_q or low_q) else ""
        words = f"{number(low) if low is not None else '…'} to {number(high) if high is not None else '…'} {unit or ''}"
        return low, high, words.strip()
    if target.integer is not None:
        return float(target.integer), float(target.integer), str(target.integer)
    return None, None, None


def goal_series(goal: Goal) -> Series | None:
    """Return the chart of a goal's numeric check-ins, or None when it has none."""
    points: list[Point] = []
    unit = ""
    for check_in in goal.check_ins:
        at = parse_instant(check_in.at)
        if check_in.quantity is not None and check_in.quantity.value is not None:
            value = float(check_in.quantity.value)
            unit = unit or check_in.quantity.unit or check_in.quantity.code or ""
        elif check_in.integer is not None:
            value = float(check_in.integer)
        else:
            continue
        if at is None or check_in.status == "entered-in-error":
            continue
        points.append(Point(at, value, number(value), check_in.recorded_by, check_in.note))
    if not points:
        return None
    points.sort(key=lambda p: p.at)
    target = next((t for t in goal.targets if target_bounds(t)[2] is not None), None)
    low, high, words = target_bounds(target) if target else (None, None, None)
    due = parse_instant(target.due_date) if target and target.due_date else None
    measure = concept_text(target.measure) if target else ""
    measure = measure or concept_text(goal.check_ins[0].measure)
    if not unit and target and target.quantity:
        unit = target.quantity.unit or ""
    return Series(
        title=f"Progress: {concept_text(goal.description)}",
        measure=measure,
        unit=unit,
        points=points,
        target_low=low,
        target_high=high,
        target_text=words,
        due=due.date() if due else None,
    )


def describe(series: Series) -> str:
    """Return the chart's description in words (its <desc>), which also says what the picture shows."""
    if not series.points:
        return "No check-ins recorded yet."
    first, last = series.points[0], series.points[-1]
    unit = f" {series.unit}" if series.unit else ""
    words = (
        f"{len(series.points)} check-in{'s' if len(series.points) != 1 else ''} of {series.measure or 'the measure'} "
        f"from {first.at.date().isoformat()} to {last.at.date().isoformat()}: "
        f"first {first.label}{unit}, latest {last.label}{unit}."
    )
    if series.target_text:
        words += f" Target {series.target_text}"
        words += f", due {series.due.isoformat()}." if series.due else "."
    elif series.due:
        words += f" Due {series.due.isoformat()}."
    return words


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    """Map value from [low, high] onto [start, end]."""
    if high == low:
        return (start + end) / 2
    return start + (value - low) * (end - start) / (high - low)


def y_range(series: Series) -> tuple[float, float]:
    """Return the value axis bounds: the data and the target, padded by a tenth, from 0 when all are positive.

    One value alone (or several equal ones) gets a band around it, so it is drawn mid-height on a real scale."""
    values = [p.value for p in series.points]
    values += [v for v in (series.target_low, series.target_high) if v is not None]
    low, high = min(values), max(values)
    if low == high and low > 0:  # one value (or several equal): from 0 to twice it, the points mid-height
        return 0.0, 2 * high
    span = high - low or abs(high) or 1.0
    low, high = low - span * 0.1, high + span * 0.1
    if min(values) >= 0 and (low < 0 or min(values) <= span):
        low = 0.0
    if high - low < 1e-9:
        high = low + 1.0
    return low, high


DAY = 86400.0
MIN_SPAN_DAYS = 14  # a single day (or one point) is shown in two weeks around it, not stretched edge to edge


def _midnight(at: date) -> datetime:
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


def time_range(instants: list[datetime]) -> tuple[datetime, datetime]:
    """Return the time axis bounds for these instants: their span padded by 5% on each side (so no point
    sits on an axis), at least two weeks wide and centred on them when they are closer together."""
    first, last = min(instants), max(instants)
    span = last.timestamp() - first.timestamp()
    if span < MIN_SPAN_DAYS * DAY:
        middle = (first.timestamp() + last.timestamp()) / 2
        return (
            datetime.fromtimestamp(middle - MIN_SPAN_DAYS * DAY / 2, UTC),
            datetime.fromtimestamp(middle + MIN_SPAN_DAYS * DAY / 2, UTC),
        )
    pad = span * 0.05
    return datetime.fromtimestamp(first.timestamp() - pad, UTC), datetime.fromtimestamp(last.timestamp() + pad, UTC)


def x_range(series: Series) -> tuple[datetime, datetime]:
    """Return the time axis bounds: from the first check-in to the last one or the due date, whichever is
    later (padded, see `time_range`)."""
    instants = [p.at for p in series.points]
    if series.due is not None:
        instants.append(_midnight(series.due))
    return time_range(instants)


def day_label(at: date) -> str:
    """A date as a clinician reads it at a glance: "13 Sep 2026"."""
    return f"{at.day} {at.strftime('%b %Y')}"


def date_ticks(start: datetime, end: datetime, marked: list[date] | None = None, most: int = 5) -> list[date]:
    """Return the dates to label on a time axis from start to end.

    The `marked` dates (the ratings' or check-ins' own days) when there are few of them and they lie far
    enough apart to be read (a seventh of the axis); otherwise round dates: every 1, 2, 7 or 14 days, or
    the first of every 1, 2, 3, 6 or 12 months, at most `most` of them."""
    span_days = (end - start).total_seconds() / DAY
    days = sorted({d for d in marked or [] if start <= _midnight(d) <= end})
    if days and len(days) <= most:
        gaps = [(b - a).days for a, b in itertools.pairwise(days)]
        if not gaps or min(gaps) >= span_days / 7:
            return days
    first = start.date() if _midnight(start.date()) >= start else date.fromordinal(start.date().toordinal() + 1)
    for step in (1, 2, 7, 14):
        if span_days / step <= most:
            return [
                date.fromordinal(first.toordinal() + i * step)
                for i in range(int(span_days // step) + 1)
                if _midnight(date.fromordinal(first.toordinal() + i * step)) <= end
            ]
    for months in (1, 2, 3, 6, 12, 24, 60):
        if span_days / (30.4 * months) <= most:
            break
    ticks = []
    index = start.year * 12 + start.month  # the month after start's (its first day is after start)
    while True:
        year, month = divmod(index, 12)
        at = date(year, month + 1, 1)
        if _midnight(at) > end:
            return ticks
        if (month % months) == 0:
            ticks.append(at)
        index += 1


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Return round tick values (steps of 1, 2 or 5 times a power of ten) within [low, high]."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _f(value: float) -> str:
    return f"{value:.1f}"


TITLE_CHARS = 80  # about the widest value-axis title that fits above the plot at 12px


def fitted(text: str, most: int = TITLE_CHARS) -> str:
    """Shorten text to `most` characters, with an ellipsis when cut (the full words are in the table)."""
    return text if len(text) <= most else text[: most - 1].rstrip() + "…"


def axes(
    start: datetime,
    end: datetime,
    low: float,
    high: float,
    value_title: str,
    marked: list[date] | None = None,
    y_ticks: list[float] | None = None,
) -> list[str]:
    """Return the SVG of a chart's frame: both axes, the value grid and ticks, the dated time ticks, and
    the axis titles. The value axis' title is written across, above the axis, so it is never clipped."""
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP

    def sx(at: datetime) -> float:
        return _scale(at.timestamp(), start.timestamp(), end.timestamp(), x0, x1)

    def sy(value: float) -> float:
        return _scale(value, low, high, y0, y1)

    parts = [
        f'<line class="axis" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/>',
        f'<line class="axis" x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}"/>',
    ]
    for value in nice_ticks(low, high) if y_ticks is None else y_ticks:
        parts.append(
            f'<line class="grid" x1="{x0}" x2="{x1}" y1="{_f(sy(value))}" y2="{_f(sy(value))}"/>'
            f'<text class="tick" x="{x0 - 6}" y="{_f(sy(value) + 4)}" text-anchor="end">{number(value)}</text>'
        )
    for at in date_ticks(start, end, marked):
        x = sx(_midnight(at))
        anchor = "start" if x < x0 + 36 else "end" if x > x1 - 36 else "middle"
        parts.append(
            f'<line class="tick-mark" x1="{_f(x)}" x2="{_f(x)}" y1="{y0}" y2="{y0 + 5}"/>'
            f'<text class="tick date-tick" x="{_f(x)}" y="{y0 + 18}" text-anchor="{anchor}">{day_label(at)}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{(x0 + x1) // 2}" y="{HEIGHT - 10}" text-anchor="middle">Date</text>'
        f'<text class="axis-label" x="8" y="{TOP - 12}" text-anchor="start">{escape(fitted(value_title))}</text>'
    )
    return parts


def progress_svg(series: Series, chart_id: str | None = None) -> Markup:
    """Return the chart as an inline SVG element (role="img", <title>, <desc>, axes, target, due date)."""
    cid = escape(chart_id or f"chart-{uuid.uuid4().hex[:8]}")
    title, desc = escape(series.title), escape(describe(series))
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" aria-labelledby="{cid}-title {cid}-desc">'
        f'<title id="{cid}-title">{title}</title><desc id="{cid}-desc">{desc}</desc>'
    )
    if not series.points:
        return Markup(  # noqa: S704 -- every text in it went through escape()
            f'{head}<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" class="axis-label">'
            "No check-ins yet</text></svg>"
        )
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    low, high = y_range(series)
    start, end = x_range(series)

    def sx(at: datetime) -> float:
        return _scale(at.timestamp(), start.timestamp(), end.timestamp(), x0, x1)

    def sy(value: float) -> float:
        return _scale(value, low, high, y0, y1)

    parts = [head]
    # the target: a band between its bounds (open-ended bounds reach the chart's edge), a line at each bound
    if series.target_low is not None or series.target_high is not None:
        top = sy(series.target_high) if series.target_high is not None else y1
        bottom = sy(series.target_low) if series.target_low is not None else y0
        if series.target_low != series.target_high:
            parts.append(
                f'<rect class="target-band" x="{x0}" y="{_f(top)}" width="{x1 - x0}" '
                f'height="{_f(max(bottom - top, 0.0))}"><title>Target {escape(series.target_text or "")}</title></rect>'
            )
        for bound in {v for v in (series.target_low, series.target_high) if v is not None}:
            parts.append(
                f'<line class="target-line" x1="{x0}" x2="{x1}" y1="{_f(sy(bound))}" y2="{_f(sy(bound))}"/>'
                f'<text class="target-label" x="{x1 - 4}" y="{_f(sy(bound) - 4)}" text-anchor="end">'
                f"target {escape(series.target_text or number(bound))}</text>"
            )
    # axes, value ticks, dated time ticks (the check-ins' own days when few), axis titles
    value_title = f"{series.measure or 'Value'}{f' ({series.unit})' if series.unit else ''}"
    parts += axes(start, end, low, high, value_title, [p.at.date() for p in series.points])
    # the due date
    if series.due is not None:
        due_x = sx(datetime(series.due.year, series.due.month, series.due.day, tzinfo=UTC))
        parts.append(
            f'<line class="due-line" x1="{_f(due_x)}" x2="{_f(due_x)}" y1="{y0}" y2="{y1}"/>'
            f'<text class="due-label" x="{_f(due_x - 4)}" y="{y0 - 6}" text-anchor="end">'
            f"due {series.due.isoformat()}</text>"
        )
    # the check-ins: a line through them and a marker with its own tooltip
    if len(series.points) > 1:  # one check-in is a marker alone, not a line of no length
        path = " ".join(f"{'L' if i else 'M'}{_f(sx(p.at))},{_f(sy(p.value))}" for i, p in enumerate(series.points))
        parts.append(f'<path class="series" d="{path}"/>')
    for p in series.points:
        parts.append(
            f'<circle class="point" cx="{_f(sx(p.at))}" cy="{_f(sy(p.value))}" r="4">'
            f"<title>{p.at.date().isoformat()}: {escape(p.label)} {escape(series.unit)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- every text in it went through escape()

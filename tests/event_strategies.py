"""Hypothesis strategies for stories of team events: every type of the catalogue, mostly well-formed,
with poison mixed into any field: control characters, whitespace-only text, systems that are not URIs,
ids with a trailing newline, very long strings, odd Unicode (lone surrogates, BOMs, bidi controls...),
zones FHIR cannot write, numbers out of range.

A story is the events of one plan, in order. Its plan id is `PLAN` and its MRN `MRN` (with whatever
poison follows them): the test puts fresh ones in, so stories never meet.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from service.domain.terminology import ROLES

PLAN, MRN = "PLAN", "MRN"
TYPES = (
    "plan.created",
    "plan.updated",
    "plan.reviewed",
    "goal_setting.declined",
    "goal_setting.resumed",
    "note.added",
    "member.joined",
    "member.left",
    "goal.proposed",
    "agreement.recorded",
    "goal.status_changed",
    "goal.revised",
    "checkin.recorded",
    "outcome.recorded",
    "step.added",
    "step.updated",
    "step.done",
)

_WORDS = st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs", "Mn"))
good_texts = st.one_of(
    st.text(_WORDS, min_size=1, max_size=40).filter(lambda s: s.strip() != ""),
    st.sampled_from(["Walk to the park", "Line one\nline two", "tab\there", "CR\r\nLF", "🚶 Sonntag, 5 km ✓"]),
)
_CONTROL = st.sampled_from([chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20))])
_WHITESPACE = st.text(st.sampled_from(" \t\n\r\u00a0\u2028\u3000\ufeff\x85\x0b"), min_size=1, max_size=4)
_ODD = st.sampled_from(
    [
        "\ud800",  # a lone surrogate: JSON can escape it, UTF-8 cannot carry it
        "x\udfffy",
        "\ufeff",
        "\ufeffword",
        "\u202eevil",  # right-to-left override
        "\u0301",  # a combining mark alone
        "\u200b",  # zero-width space
        "\ufffe\uffff",  # noncharacters
        "\U0001d518\U0001d52b \U0010fffd",  # astral letters, a private-use plane
        "\u0661\u0662\u0663",  # Arabic-Indic digits
    ]
)


@st.composite
def poison_texts(draw: st.DrawFn) -> str:
    """A string FHIR may refuse (or, for some odd Unicode, accept): the schemas must tell which."""
    kind = draw(st.sampled_from(["control", "whitespace", "newline", "long", "odd"]))
    text = draw(good_texts)
    if kind == "control":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(_CONTROL) + text[at:]
    if kind == "whitespace":
        return draw(_WHITESPACE)
    if kind == "newline":
        return text + "\n"
    if kind == "long":
        return "a" * draw(st.sampled_from([64, 200, 201, 2000, 2001, 40_000]))  # at and past each limit
    return draw(_ODD)


def sometimes(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `good`, one time in sixteen `bad`: stories go on, and poison reaches every field."""
    return st.integers(0, 15).flatmap(lambda n: bad if n == 7 else good)  # shrinks towards good


texts = sometimes(good_texts, poison_texts())
short_texts = sometimes(st.text(_WORDS, min_size=1, max_size=20).filter(lambda s: s.strip() != ""), poison_texts())
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)
bad_ids = st.one_of(ids.map(lambda i: i + "\n"), ids.map(lambda i: i + " x"), st.just("a" * 65), st.just("\u0661"))
systems = sometimes(
    st.sampled_from(["http://loinc.org", "http://snomed.info/sct", "urn:oid:1.2.3.4", "https://example.org/cs"]),
    st.sampled_from(["not a uri", "http://x\n", "http://x\x01y", "http://x\ufeffy", "http://x\u00a0y", "a" * 501]),
)
codes = sometimes(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10),
    st.sampled_from(["a  b", " a", "a\n", "a\u00a0b", "a\tb", "a\x01"]),
)
units = sometimes(st.sampled_from(["kg", "/min", "{steps}", "mm[Hg]", "h"]), st.sampled_from(["kg  m", " kg", "kg\n"]))
dates = sometimes(
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(["2026-02-30", "2026-1-1x", "0000-01-01", ""]),
)
_ZONES_OK = ["Z", "+14:00", "-12:00", "+05:30", "-00:30"]
_ZONES_BAD = ["+15:00", "-14:30", "+05:30:15", "+00:00:00.5", ""]
instants = st.builds(
    lambda d, h, zone: f"{d.isoformat()}T{h:02d}:15:00{zone}",
    st.dates(),
    st.integers(0, 23),
    sometimes(st.sampled_from(_ZONES_OK), st.sampled_from(_ZONES_BAD)),
)
numbers = sometimes(
    st.one_of(st.integers(-1000, 100_000), st.decimals(-(10**6), 10**6, places=3, allow_nan=False).map(float)),
    st.sampled_from([10**13, -(10**13), 1e300, 2**31]),
)


def _optional(data: dict[str, Any], draw: st.DrawFn, key: str, strategy: st.SearchStrategy[Any]) -> None:
    if draw(st.booleans()):
        data[key] = draw(strategy)


def _coding(draw: st.DrawFn) -> dict[str, Any]:
    coding: dict[str, Any] = {}
    _optional(coding, draw, "system", systems)
    _optional(coding, draw, "code", codes)
    if "code" not in coding or draw(st.booleans()):
        coding["display"] = draw(texts)
    return coding


class Story:
    """What the events of a story have named so far (created or not: the service decides)."""

    def __init__(self) -> None:
        self.members = ["patient", "gp"]
        self.goals: list[str] = []
        self.steps: list[str] = []

    def pick(self, draw: st.DrawFn, known: list[str]) -> str:
        """Mostly a known id, sometimes a new or poisoned one."""
        if known and draw(st.integers(0, 5)) != 3:
            return draw(st.sampled_from(known))
        return draw(sometimes(ids, bad_ids))

    def person(self, draw: st.DrawFn) -> dict[str, Any]:
        kind = draw(st.sampled_from(["patient", "practitioner", "related-person"]))
        person: dict[str, Any] = {"kind": kind}
        if kind != "patient":
            member = self.pick(draw, self.members)
            person["member_id"] = member
            self.members.append(member)
            person["display"] = draw(short_texts)
            _optional(person, draw, "role", st.sampled_from(sorted(ROLES)))
            if draw(st.booleans()):
                person["identifier"] = {"system": draw(systems), "value": draw(short_texts)}
        return person

    def goal(self, draw: st.DrawFn) -> dict[str, Any]:
        goal_id = draw(sometimes(ids, bad_ids))
        self.goals.append(goal_id)
        goal: dict[str, Any] = {"id": goal_id, "description": draw(texts)}
        _optional(goal, draw, "priority", st.sampled_from(["high-priority", "low-priority"]))
        _optional(goal, draw, "start_date", dates)
        _optional(goal, draw, "due_date", dates)
        if draw(st.booleans()):
            target: dict[str, Any] = {"measure": _coding(draw)}
            if draw(st.booleans()):
                target["value"] = draw(numbers)
                _optional(target, draw, "unit", units)
                _optional(target, draw, "comparator", st.sampled_from([">=", "<"]))
            else:
                _optional(target, draw, "text", texts)
            _optional(target, draw, "due_date", dates)
            goal["targets"] = [target]
        if draw(st.booleans()):
            goal["contingencies"] = [{"if": draw(texts), "then": draw(texts)}]
            _optional(goal["contingencies"][0], draw, "owner", st.sampled_from(self.members))
        if draw(st.booleans()):
            levels = sometimes(st.sampled_from(["-2", "-1", "0", "1", "2"]), st.sampled_from(["3", "+1", " 0"]))
            goal["gas_levels"] = draw(st.dictionaries(levels, texts, min_size=1, max_size=3))
        _optional(goal, draw, "gas_weight", sometimes(st.sampled_from([0.5, 1, 2.5]), st.sampled_from([0, -1, 1e9])))
        return goal


@st.composite
def _data(draw: st.DrawFn, story: Story, kind: str) -> dict[str, Any]:
    plan_id = PLAN + draw(sometimes(st.just(""), st.sampled_from(["\n", " ", "\x00", "/x"])))
    data: dict[str, Any] = {"plan_id": plan_id}
    if kind == "plan.created":
        data["patient"] = {"mrn": MRN + draw(sometimes(st.just(""), st.sampled_from(["\n", "\x01", "\u3000"])))}
        _optional(data["patient"], draw, "display_name", short_texts)
        _optional(data, draw, "title", short_texts)
        _optional(data, draw, "what_matters", texts)
        if draw(st.booleans()):
            data["categories"] = [_coding(draw) for _ in range(draw(st.integers(1, 2)))]
        if draw(st.booleans()):
            data["author"] = {"kind": "practitioner", "member_id": "gp", "role": "general-practitioner"}
            data["author"]["display"] = draw(short_texts)
        _optional(data, draw, "review_every", st.just({"value": 3, "unit": "mo"}))
    elif kind == "plan.updated":
        data["title"] = draw(short_texts)
        _optional(data, draw, "what_matters", texts)
        _optional(data, draw, "status", st.sampled_from(["active", "draft", "on-hold"]))
    elif kind == "plan.reviewed":
        data["reviewed_on"] = "2027-02-01"
        data["next_review"] = "2027-05-01"
        _optional(data, draw, "note", texts)
        _optional(data, draw, "by", st.sampled_from(story.members))
    elif kind in ("goal_setting.declined", "goal_setting.resumed"):
        data["date"] = draw(dates)
        _optional(data, draw, "note", texts)
    elif kind == "note.added":
        data["text"] = draw(texts)
        data["author"] = story.pick(draw, story.members)
        if story.goals and draw(st.booleans()):
            data["goal_id"] = story.pick(draw, story.goals)
        _optional(data, draw, "time", instants)
    elif kind == "member.joined":
        member = draw(sometimes(ids, bad_ids))
        story.members.append(member)
        data.update(member_id=member, kind=draw(st.sampled_from(["practitioner", "related-person"])))
        data["name"] = draw(short_texts)
        _optional(data, draw, "role", st.sampled_from(sorted(ROLES)))
        if draw(st.booleans()):
            data["identifier"] = {"system": draw(systems), "value": draw(short_texts)}
    elif kind == "member.left":
        data["member_id"] = story.pick(draw, story.members[2:])
    elif kind == "goal.proposed":
        data["patient"] = {"mrn": MRN}
        data["goal"] = {**story.goal(draw), "proposed_by": story.person(draw)}
    elif kind == "agreement.recorded":
        data.update(goal_id=story.pick(draw, story.goals), member_id=story.pick(draw, story.members))
        data["status"] = draw(st.sampled_from(["agree", "disagree", "pending"]))
    elif kind == "goal.status_changed":
        data["goal_id"] = story.pick(draw, story.goals)
        data["lifecycle_status"] = draw(st.sampled_from(["accepted", "active", "on-hold", "completed"]))
        _optional(data, draw, "achievement", st.sampled_from(["improving", "achieved"]))
        _optional(data, draw, "reason", texts)
        _optional(data, draw, "date", dates)
    elif kind == "goal.revised":
        data["replaces"] = story.pick(draw, story.goals)
        data["goal"] = story.goal(draw)
        data["revised_by"] = story.person(draw)
        _optional(data, draw, "reason", texts)
    elif kind == "checkin.recorded":
        data.update(goal_id=story.pick(draw, story.goals), checkin_id=draw(sometimes(ids, bad_ids)))
        data["at"] = draw(instants)
        data["measure"] = _coding(draw)
        which = draw(st.sampled_from(["value", "rating", "integer", "text"]))
        data[which] = {
            "value": lambda: draw(numbers),
            "rating": lambda: _coding(draw),
            "integer": lambda: draw(st.integers(-(2**31), 2**31 - 1)),
            "text": lambda: draw(texts),
        }[which]()
        if which == "value":
            _optional(data, draw, "unit", units)
        _optional(data, draw, "note", texts)
        _optional(data, draw, "recorded_by", st.sampled_from(story.members))
    elif kind == "outcome.recorded":
        scale = draw(sometimes(st.sampled_from(["gbo", "gas"]), st.sampled_from(["GBO", "sdq", ""])))
        in_range = st.integers(0, 10) if scale == "gbo" else st.integers(-2, 2)
        data.update(goal_id=story.pick(draw, story.goals), scale=scale, rated_by=story.pick(draw, story.members))
        data["score"] = draw(sometimes(in_range, st.sampled_from([11, -3, 2.5, "4", True, 2**31])))
        data["occasion"] = draw(sometimes(st.sampled_from(["baseline", "session", "review", "end"]), st.just("later")))
        data["at"] = draw(instants)
        _optional(data, draw, "note", texts)
        _optional(data, draw, "rating_id", sometimes(ids, bad_ids))
    elif kind == "step.added":
        step = draw(sometimes(ids, bad_ids))
        story.steps.append(step)
        data.update(step_id=step, title=draw(short_texts))
        _optional(data, draw, "description", texts)
        if story.goals and draw(st.booleans()):
            data["goal_ids"] = [story.pick(draw, story.goals)]
        _optional(data, draw, "owner", st.sampled_from(story.members))
        if draw(st.booleans()):
            data["schedule"] = draw(short_texts)
    elif kind == "step.updated":
        data["step_id"] = story.pick(draw, story.steps)
        _optional(data, draw, "description", texts)
        data["progress"] = {"text": draw(texts)}
        _optional(data["progress"], draw, "time", instants)
    elif kind == "step.done":
        data["step_id"] = story.pick(draw, story.steps)
        _optional(data, draw, "note", texts)
    return data


@st.composite
def stories(draw: st.DrawFn, max_events: int = 12) -> list[dict[str, Any]]:
    """The events of one plan: it opens with plan.created or goal.proposed, then any type, in any order."""
    story = Story()
    kinds = [draw(st.sampled_from(["plan.created", "goal.proposed"]))]
    kinds += draw(st.lists(st.sampled_from(TYPES), max_size=max_events - 1))
    return [{"type": kind, "timestamp": "2026-11-22T09:30:00Z", "data": draw(_data(story, kind))} for kind in kinds]

"""Hypothesis strategies for valid shared plans: `check_plan` finds no error in any of them.

Values keep to what FHIR R4 JSON can carry (https://hl7.org/fhir/R4/datatypes.html#primitive):
strings are non-empty and not only whitespace, ids match `[A-Za-z0-9-.]{1,64}`, codes hold no
whitespace, dates are real dates, date-times with a time have a zone, decimals are finite with a
few places (they travel as JSON numbers). FHIR has no empty objects, so a quantity always has a
value, a range or ratio at least one side, a reference its `reference`, and a target its measure.
Every member is on the CareTeam (`in_team`): a member a plan only mentions has no element id in
FHIR to carry the plan's member id, so bundle_to_plan names it after its resource.
"""

from __future__ import annotations

from datetime import date

from hypothesis import strategies as st

from service.domain import model
from service.domain.model import (
    Agreement,
    CheckIn,
    Contingency,
    Goal,
    Member,
    OutcomeRating,
    Patient,
    Plan,
    Step,
    Target,
)
from service.domain.terminology import ROLES
from service.domain.types import Coding, Concept, Identifier, Note, Quantity, Range, Ratio, Ref

_TEXT_CHARS = st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"))
texts = st.text(_TEXT_CHARS, min_size=1, max_size=24).filter(lambda s: s.strip() != "")
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ids = st.text(_ALNUM + "-.", min_size=1, max_size=64)  # FHIR id: [A-Za-z0-9\-.]{1,64}
short_ids = st.text(_ALNUM + "-", min_size=1, max_size=12)
codes = st.text(_ALNUM + "-_.:", min_size=1, max_size=16)  # FHIR code: no whitespace
systems = st.builds(lambda c: f"http://example.org/cs/{c}", short_ids)


def dates() -> st.SearchStrategy[str]:
    """Full or partial FHIR dates: YYYY, YYYY-MM or YYYY-MM-DD."""
    full = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
    return st.one_of(
        full.map(date.isoformat), full.map(lambda d: d.isoformat()[:7]), full.map(lambda d: d.isoformat()[:4])
    )


def _zone(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def instants(draw: st.DrawFn) -> str:
    """Date-times to the second (with a fraction now and then) and a time zone."""
    day = draw(st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    fraction = draw(st.sampled_from(["", ".5", ".123"]))
    zone = _zone(draw(st.sampled_from([0, 60, -300, 330, 780, -720])))
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


date_times = st.one_of(dates(), instants())
decimals = st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False, allow_infinity=False)

codings = st.builds(
    Coding,
    system=systems,
    code=codes,
    display=st.none() | texts,
    version=st.none() | codes,
    user_selected=st.none() | st.booleans(),
)
concepts = st.one_of(
    st.builds(Concept, codings=st.lists(codings, min_size=1, max_size=2), text=st.none() | texts),
    st.builds(Concept, text=texts),
)
identifiers = st.builds(Identifier, system=systems, value=texts)
quantities = st.builds(
    Quantity,
    value=decimals,
    comparator=st.none() | st.sampled_from(model.COMPARATORS),
    unit=st.none() | texts,
    system=st.none() | st.just("http://unitsofmeasure.org"),
    code=st.none() | codes,
)
plain_quantities = st.builds(Quantity, value=decimals, unit=st.none() | texts, code=st.none() | codes)
ranges = st.one_of(
    st.builds(Range, low=plain_quantities, high=st.none() | plain_quantities),
    st.builds(Range, high=plain_quantities),
)
ratios = st.one_of(
    st.builds(Ratio, numerator=plain_quantities, denominator=st.none() | plain_quantities),
    st.builds(Ratio, denominator=plain_quantities),
)
durations = st.builds(
    Quantity,
    value=decimals.map(abs),
    unit=st.sampled_from(["d", "wk", "mo"]),
    system=st.just("http://unitsofmeasure.org"),
)
refs = st.builds(
    Ref,
    reference=st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(["Condition", "Observation"]), ids),
    display=st.none() | texts,
    type=st.none() | st.sampled_from(["Condition", "Observation"]),
    identifier=st.none() | identifiers,
)

DETAILS = {
    "quantity": quantities,
    "range": ranges,
    "ratio": ratios,
    "concept": concepts,
    "text": texts,
    "boolean": st.booleans(),
    "integer": st.integers(-(2**31), 2**31 - 1),
}


@st.composite
def targets(draw: st.DrawFn) -> Target:
    """A target with a measure, at most one detail of any type, and a due date or duration (or neither)."""
    target = Target(measure=draw(concepts))
    kind = draw(st.none() | st.sampled_from(sorted(DETAILS)))
    if kind is not None:
        setattr(target, kind, draw(DETAILS[kind]))
    due = draw(st.sampled_from(["none", "date", "duration"]))
    if due == "date":
        target.due_date = draw(dates())
    elif due == "duration":
        target.due_duration = draw(durations)
    return target


@st.composite
def teams(draw: st.DrawFn) -> list[Member]:
    """1-6 members: at most one patient, practitioners and related persons; unique ids and identifiers."""
    kinds = draw(st.lists(st.sampled_from(model.MEMBER_KINDS), min_size=1, max_size=6))
    if kinds.count("patient") > 1:
        kinds = ["patient"] + [k for k in kinds if k != "patient"]
    member_ids = draw(st.lists(ids, min_size=len(kinds), max_size=len(kinds), unique=True))
    team = []
    for n, (kind, member_id) in enumerate(zip(kinds, member_ids, strict=True)):
        role = draw(st.none() | st.sampled_from(sorted(ROLES)).map(lambda r: Concept(codings=[ROLES[r]])))
        member = Member(id=member_id, kind=kind, role=role, name=draw(st.none() | texts))
        if kind != "patient":
            how = draw(st.sampled_from(["ours", "identifier", "reference"]))
            resource = "Practitioner" if kind == "practitioner" else "RelatedPerson"
            if how == "identifier":
                member.identifier = Identifier(draw(systems), f"{draw(texts)}-{n}")
            elif how == "reference":
                member.fhir_reference = f"{resource}/{resource.lower()}-{n}"
        team.append(member)
    return team


def notes(member_ids: list[str]) -> st.SearchStrategy[Note]:
    """Notes by a team member or a named author (Annotation.author[x] is one or the other) or anonymous."""
    author = st.one_of(
        st.just((None, None)),
        st.sampled_from(member_ids).map(lambda m: (m, None)),
        texts.map(lambda name: (None, name)),
    )
    return st.builds(
        lambda a, text, time: Note(text=text, author_member=a[0], author_name=a[1], time=time),
        author,
        texts,
        st.none() | date_times,
    )


@st.composite
def check_ins(draw: st.DrawFn, member_ids: list[str], check_in_id: str) -> CheckIn:
    """A check-in with at most one value (Observation.value[x])."""
    check_in = CheckIn(
        id=check_in_id,
        at=draw(date_times),
        measure=draw(concepts),
        note=draw(st.none() | texts),
        recorded_by=draw(st.none() | st.sampled_from(member_ids)),
        status=draw(st.sampled_from(["preliminary", "final", "amended"])),
    )
    kind = draw(st.sampled_from(["none", "quantity", "rating", "integer", "text"]))
    values = {"quantity": quantities, "rating": concepts, "integer": st.integers(-1000, 1000), "text": texts}
    if kind != "none":
        setattr(check_in, kind, draw(values[kind]))
    return check_in


@st.composite
def ratings(draw: st.DrawFn, member_ids: list[str], rating_id: str) -> OutcomeRating:
    """An outcome rating: a GBO score 0-10 or a GAS level -2..+2, at an occasion, by a member."""
    scale = draw(st.sampled_from(model.OUTCOME_SCALES))
    low, high = model.SCORE_RANGES[scale]
    return OutcomeRating(
        id=rating_id,
        scale=scale,
        score=draw(st.integers(low, high)),
        occasion=draw(st.sampled_from(model.OUTCOME_OCCASIONS)),
        rated_by=draw(st.sampled_from(member_ids)),
        at=draw(date_times),
        note=draw(st.none() | texts),
    )


def contingencies(member_ids: list[str]) -> st.SearchStrategy[Contingency]:
    """An "if ..., then ..." plan, owned by a member or nobody."""
    return st.builds(Contingency, texts, texts, st.none() | st.sampled_from(member_ids))


gas_weights = st.floats(min_value=0.001, max_value=1000, allow_nan=False, allow_infinity=False)


def _lifecycle_statuses(goal_setting: str, patient_agreement: str | None) -> list[str]:
    """Statuses the collaboration rules allow, given goal setting and the patient's agreement."""
    allowed = list(model.GOAL_LIFECYCLE_STATUSES)
    if patient_agreement == "disagree":
        allowed = [s for s in allowed if s not in ("accepted", "active", "completed")]
    if goal_setting == "declined":
        allowed = [s for s in allowed if s not in ("proposed", "accepted", "active")]
    return allowed


@st.composite
def goals(draw: st.DrawFn, team: list[Member], goal_id: str, earlier: list[str], goal_setting: str) -> Goal:
    """A goal whose agreements, author, notes and check-ins name team members, replacing an earlier goal or not."""
    member_ids = [m.id for m in team]
    agreeing = draw(st.lists(st.sampled_from(member_ids), unique=True, max_size=len(member_ids)))
    agreements = [
        Agreement(
            member_id=m,
            status=draw(st.none() | st.sampled_from(model.AGREEMENT_STATUSES)),
            priority=draw(st.none() | concepts),
        )
        for m in agreeing
    ]
    patient = next((m.id for m in team if m.kind == "patient"), None)
    patient_agreement = next((a.status for a in agreements if a.member_id == patient), None)
    observation_ids = draw(st.lists(short_ids, unique=True, max_size=4))  # check-ins and ratings share ids
    check_in_ids, rating_ids = observation_ids[:2], observation_ids[2:]
    return Goal(
        id=goal_id,
        description=draw(concepts),
        lifecycle_status=draw(st.sampled_from(_lifecycle_statuses(goal_setting, patient_agreement))),
        categories=draw(st.lists(concepts, max_size=2)),
        priority=draw(st.none() | st.sampled_from(model.GOAL_PRIORITIES).map(lambda p: Concept([Coding(PRIORITY, p)]))),
        achievement=draw(st.none() | concepts),
        status_date=draw(st.none() | dates()),
        status_reason=draw(st.none() | texts),
        proposed_by=draw(st.none() | st.sampled_from(member_ids)),
        start_date=draw(st.none() | dates()),
        targets=draw(st.lists(targets(), max_size=3)),
        addresses=draw(st.lists(refs, max_size=2)),
        barriers=draw(st.lists(texts, max_size=2)),
        notes=draw(st.lists(notes(member_ids), max_size=2)),
        agreements=agreements,
        check_ins=[draw(check_ins(member_ids, c)) for c in check_in_ids],
        replaces=draw(st.none() | st.sampled_from(earlier)) if earlier else None,
        identifiers=draw(st.lists(identifiers, max_size=1)),
        ratings=[draw(ratings(member_ids, r)) for r in rating_ids],
        gas_levels=draw(st.dictionaries(st.sampled_from(model.GAS_LEVELS), texts, max_size=5)),
        gas_weight=draw(st.none() | gas_weights),
        contingencies=draw(st.lists(contingencies(member_ids), max_size=2)),
    )


PRIORITY = "http://terminology.hl7.org/CodeSystem/goal-priority"


@st.composite
def steps(draw: st.DrawFn, step_id: str, member_ids: list[str], goal_ids: list[str]) -> Step:
    """A step toward some goals, owned by a member or nobody, scheduled by text or by dates."""
    step = Step(
        id=step_id,
        title=draw(st.none() | texts),
        status=draw(st.sampled_from(model.STEP_STATUSES)),
        description=draw(st.none() | texts),
        code=draw(st.none() | concepts),
        goal_ids=draw(st.lists(st.sampled_from(goal_ids), unique=True, max_size=2)) if goal_ids else [],
        owner=draw(st.none() | st.sampled_from(member_ids)),
        progress=draw(st.lists(notes(member_ids), max_size=2)),
    )
    if draw(st.booleans()):
        step.schedule = draw(st.none() | texts)
    else:
        step.start_date = draw(st.none() | date_times)
        step.due_date = draw(st.none() | date_times)
    return step


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """A valid shared plan: a team, goals, steps and the plan's own fields."""
    team = draw(teams())
    member_ids = [m.id for m in team]
    goal_setting = draw(st.sampled_from(model.GOAL_SETTING))
    goal_ids = draw(st.lists(ids, unique=True, max_size=4))
    plan_goals: list[Goal] = []
    for goal_id in goal_ids:
        plan_goals.append(draw(goals(team, goal_id, [g.id for g in plan_goals], goal_setting)))
    step_ids = draw(st.lists(ids, unique=True, max_size=3))
    return Plan(
        id=draw(ids),
        patient=Patient(mrn=draw(texts), display_name=draw(st.none() | texts)),
        status=draw(st.sampled_from(model.PLAN_STATUSES)),
        intent=draw(st.sampled_from(model.PLAN_INTENTS)),
        title=draw(st.none() | texts),
        period_start=draw(st.none() | date_times),
        period_end=draw(st.none() | date_times),
        what_matters=draw(st.none() | texts),
        goal_setting=goal_setting,
        goal_setting_note=draw(st.none() | texts),
        goal_setting_date=draw(st.none() | date_times),
        review_every=draw(st.none() | durations),
        next_review=draw(st.none() | dates()),
        author=draw(st.none() | st.sampled_from(member_ids)),
        contributors=draw(st.lists(st.sampled_from(member_ids), unique=True, max_size=3)),
        categories=draw(st.lists(concepts, max_size=2)),
        team=team,
        goals=plan_goals,
        steps=[draw(steps(s, member_ids, goal_ids)) for s in step_ids],
        notes=draw(st.lists(notes(member_ids), max_size=2)),
        identifiers=draw(st.lists(identifiers, max_size=1)),
        created_at=draw(st.none() | instants()),
        updated_at=draw(st.none() | instants()),
        version=draw(st.integers(0, 1000)),
    )

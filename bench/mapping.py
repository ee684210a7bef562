"""Goals mapped per second each way, with validation, vs plain json.loads + json.dumps of the same documents.

internal -> FHIR: a plan's Goal mapped to FHIR, validated (structure, bindings, invariants), dumped to JSON text.
FHIR -> internal: Goal JSON text parsed, validated as untrusted input, mapped to a Goal.
The baseline (json.loads + json.dumps of the same Goal JSON texts) and fhir.resources' own pydantic
validation are measured in the same run, pinned to one core. Run: `.venv/bin/python bench/mapping.py [N]`.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from mappings import fhir
from mappings.goal import goal_from_fhir, goal_to_fhir
from mappings.refs import Refs, Resolver
from mappings.validate import check_resource
from service.domain.errors import MappingError
from service.domain.model import Agreement, Goal, Target
from service.domain.types import Coding, Concept, Identifier, Note, Quantity, Range, Ref

BASE = "https://planbridge.example.org/id"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
PRIORITY = Concept([Coding("http://terminology.hl7.org/CodeSystem/goal-priority", "medium-priority", "Medium")])


def realistic_goal(i: int) -> Goal:
    """A goal as teams write them: three targets, four agreements, notes, check-ins, a barrier, a revision."""
    kg = dict(unit="kg", system="http://unitsofmeasure.org", code="kg")
    return Goal(
        id=f"goal-{i}",
        description=Concept([Coding(SNOMED, "289169006", "Weight loss")], text=f"Lose weight for my wedding {i}"),
        lifecycle_status="active",
        categories=[Concept([Coding("http://terminology.hl7.org/CodeSystem/goal-category", "dietary")])],
        priority=PRIORITY,
        achievement=Concept([Coding("http://terminology.hl7.org/CodeSystem/goal-achievement", "improving")]),
        status_date="2026-10-01",
        proposed_by="patient",
        start_date="2026-09-01",
        targets=[
            Target(
                measure=Concept([Coding(LOINC, "29463-7", "Body weight")]),
                quantity=Quantity(Decimal("82.5"), "<=", **kg),
                due_date="2027-03-01",
            ),
            Target(
                measure=Concept([Coding(LOINC, "4548-4", "HbA1c")]),
                range=Range(Quantity(Decimal("6.0"), unit="%"), Quantity(Decimal("7.0"), unit="%")),
                due_duration=Quantity(Decimal(6), unit="mo", system="http://unitsofmeasure.org", code="mo"),
            ),
            Target(measure=Concept(text="Walks per week"), integer=3),
        ],
        addresses=[Ref("Condition/diabetes-2", display="Type 2 diabetes")],
        barriers=["Night shifts make regular meals hard"],
        notes=[
            Note("Agreed to start with evening walks", author_member="nurse", time="2026-09-01T10:00:00+01:00"),
            Note("Daughter will join on Sundays", author_name="Ann (daughter)"),
        ],
        agreements=[
            Agreement("patient", "agree", Concept([Coding(SNOMED, "394849002", "High priority")])),
            Agreement("nurse", "agree"),
            Agreement("diet", "pending"),
            Agreement("gp", "agree"),
        ],
        identifiers=[Identifier("http://ehr.example.org/goal", f"G-{i}")],
    )


def refs() -> Refs:
    members = {"patient": "Patient/42", "nurse": "Practitioner/7", "diet": "Practitioner/8", "gp": "Practitioner/9"}
    return Refs(BASE, "Patient/42", members=members, goals={"goal-0": "Goal/old"}, patient_display="Sam Jones")


def to_fhir_text(goal: Goal, goal_refs: Refs) -> str:
    """internal -> FHIR: map, validate (structure, then bindings and invariants), dump."""
    resource = goal_to_fhir(goal, "plan-1", goal_refs, "goal")
    fhir.validate(resource)
    problems = [i for i in check_resource(resource) if i.severity == "error"]
    if problems:
        raise MappingError("invalid Goal", errors={i.path: i.message for i in problems})
    return json.dumps(resource)


def from_fhir_text(text: str) -> Goal:
    """FHIR -> internal: parse, validate as untrusted input, map."""
    resource = json.loads(text)
    problems = [i for i in fhir.issues_of(resource) if i.severity == "error"]
    if problems:
        raise MappingError("invalid Goal", errors={i.path: i.message for i in problems})
    return goal_from_fhir(resource, Resolver({}, "Patient/42", BASE), BASE, "plan-1").goal


def rate(step: Callable[[Any], object], items: list[Any], repeats: int = 5) -> float:
    """Best of `repeats` passes of `step` over `items`, in items per second (each result is dropped at once)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            step(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def profile(step: Callable[[Any], object], items: list[Any], top: int = 12) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [step(item) and None for item in items])
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "tottime" in line)
    return "\n".join(lines[start : start + top + 1])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    goal_refs = refs()
    goals = [realistic_goal(i) for i in range(n)]
    texts = [to_fhir_text(g, goal_refs) for g in goals]
    resources = [json.loads(t) for t in texts]
    assert all(from_fhir_text(t) == goal_from_fhir(r, Resolver({}, "Patient/42", BASE), BASE).goal
               for t, r in zip(texts[:10], resources[:10], strict=True))  # fmt: skip

    baseline = rate(lambda t: json.dumps(json.loads(t)), texts)
    out = rate(lambda g: to_fhir_text(g, goal_refs), goals)
    back = rate(from_fhir_text, texts)
    # the parts, each on its own
    loads = rate(json.loads, texts)
    dumps = rate(json.dumps, resources)
    structure = rate(fhir.validate, resources)
    bindings = rate(check_resource, resources)
    map_out = rate(lambda g: goal_to_fhir(g, "plan-1", goal_refs, "goal"), goals)
    map_in = rate(lambda r: goal_from_fhir(r, Resolver({}, "Patient/42", BASE), BASE, "plan-1"), resources)
    models = rate(fhir.validate_with_models, resources[: n // 4], repeats=1)

    print(f"Goal mapping with validation, one core, {n} goals of {len(texts[0])} bytes of JSON each\n")
    print(f"{'':44}{'goals/s':>10}{'vs baseline':>13}")
    print(f"{'baseline: json.loads + json.dumps':44}{baseline:>10,.0f}{1:>12.2f}x")
    print(f"{'internal -> FHIR (map, validate, dumps)':44}{out:>10,.0f}{out / baseline:>12.3f}x")
    print(f"{'FHIR -> internal (loads, validate, map)':44}{back:>10,.0f}{back / baseline:>12.3f}x")
    target = min(out, back)
    print(f"\nslower direction: {target:,.0f} goals/s, {target / 5000:.1f}x the 5,000 goals/s the issue asks for")
    print(f"\nwhere the time goes (microseconds per goal, each part alone; baseline {1e6 / baseline:.1f} us):")
    parts = [
        ("json.loads", loads),
        ("json.dumps", dumps),
        ("structure (compiled from fhir.resources models)", structure),
        ("bindings + invariants (validate.py)", bindings),
        ("goal_to_fhir", map_out),
        ("goal_from_fhir", map_in),
    ]
    for name, per_s in parts:
        print(f"  {name:52}{1e6 / per_s:>8.1f} us")
    print(f"\nfor comparison, fhir.resources' model_validate alone: {models:,.0f} goals/s ({1e6 / models:.0f} us);")
    print(f"the compiled structure check is {structure / models:.0f}x faster on the same documents")
    print("\ncProfile, FHIR -> internal, by own time:")
    print(profile(from_fhir_text, texts))
    print("\ncProfile, internal -> FHIR, by own time:")
    print(profile(lambda g: to_fhir_text(g, goal_refs), goals))


if __name__ == "__main__":
    main()

"""A plan's outcome ratings summed up: per goal and scale the baseline, the latest, the change, and for
Goal Attainment Scaling the plan's T-score. This is what `GET /plans/{id}/outcomes` answers.

- **GBO** (Goal-Based Outcomes, 0-10): a change of at least `PLANBRIDGE_GBO_RELIABLE_CHANGE` points
  (default 2.45) between the baseline and the latest rating is marked reliable. The default is the
  reliable change index reported for the GBO by Edbrooke-Childs, Jacob, Law, Deighton & Wolpert (2015),
  "Interpreting standardized and idiographic outcome measures in CAMHS", Child and Adolescent Mental
  Health 20(3):142-148.
- **GAS** (Goal Attainment Scaling, -2..+2): the Kiresuk-Sherman T-score over the goals rated on it,
  from each goal's latest level x_i and weight w_i (`Goal.gas_weight`, 1 when absent):
  T = 50 + 10 * sum(w_i * x_i) / sqrt((1 - rho) * sum(w_i^2) + rho * (sum(w_i))^2), rho = 0.3
  (Kiresuk & Sherman 1968, "Goal attainment scaling: a general method for evaluating comprehensive
  community mental health programs", Community Mental Health Journal 4(6):443-453). 50 means every
  goal was attained as expected; each level above or below moves it by about 10 for a single goal.
  No reliable-change threshold is given for GAS (`reliable_change` is null).

The baseline of a goal on a scale is its first rating given at the `baseline` occasion (else its first
rating); the latest is its last by time. `change` is latest minus baseline, null with a single rating.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from service.domain import codec
from service.domain.instants import parse_instant
from service.domain.model import OUTCOME_SCALES, Goal, OutcomeRating, Plan
from service.settings import Settings

GAS_RHO = 0.3  # the intercorrelation of goal scores Kiresuk & Sherman assume
GBO_SOURCE = (
    "Edbrooke-Childs, Jacob, Law, Deighton & Wolpert (2015), Interpreting standardized and idiographic "
    "outcome measures in CAMHS, Child and Adolescent Mental Health 20(3):142-148"
)
GAS_SOURCE = "Kiresuk & Sherman (1968), Community Mental Health Journal 4(6):443-453; rho = 0.3"


def _instant(at: str) -> datetime:
    """Return a sortable instant for a FHIR dateTime (partial dates and dates without a zone read as UTC)."""
    return parse_instant(at) or datetime.max.replace(tzinfo=UTC)  # not a date: after every real one


def in_time_order(ratings: list[OutcomeRating]) -> list[OutcomeRating]:
    """Return ratings oldest first (ratings at the same instant keep the order they were recorded in)."""
    return sorted(ratings, key=lambda r: _instant(r.at))


def _rating_dict(rating: OutcomeRating) -> dict[str, Any]:
    out = codec.to_dict(rating)
    out.pop("fhir_extra", None)
    return out


def _entry(goal: Goal, scale: str, ratings: list[OutcomeRating], threshold: float) -> dict[str, Any]:
    ordered = in_time_order(ratings)
    baseline = next((r for r in ordered if r.occasion == "baseline"), ordered[0])
    latest = ordered[-1]
    change = latest.score - baseline.score if latest is not baseline else None
    reliable = abs(change) >= threshold if change is not None and scale == "gbo" else None
    return {
        "goal_id": goal.id,
        "scale": scale,
        "baseline": baseline.score,
        "latest": latest.score,
        "change": change,
        "reliable_change": reliable,
        "ratings": [_rating_dict(r) for r in ordered],
    }


def t_score(levels: list[tuple[int, float]], rho: float = GAS_RHO) -> float | None:
    """Return the Kiresuk-Sherman T-score of (GAS level, weight) pairs, None when there are none."""
    if not levels:
        return None
    weighted = sum(w * x for x, w in levels)
    squares = sum(w * w for _, w in levels)
    total = sum(w for _, w in levels)
    return 50 + 10 * weighted / math.sqrt((1 - rho) * squares + rho * total * total)


def _gas(plan: Plan, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    gas = [e for e in entries if e["scale"] == "gas"]
    if not gas:
        return None
    weights = {}
    for e in gas:
        goal = plan.goal(e["goal_id"])
        weights[e["goal_id"]] = goal.gas_weight if goal is not None and goal.gas_weight is not None else 1.0
    latest = t_score([(e["latest"], weights[e["goal_id"]]) for e in gas])
    baseline = t_score([(e["baseline"], weights[e["goal_id"]]) for e in gas])
    return {
        "t_score": round(latest, 2) if latest is not None else None,
        "baseline_t_score": round(baseline, 2) if baseline is not None else None,
        "goals": len(gas),
        "weights": weights,
        "rho": GAS_RHO,
        "source": GAS_SOURCE,
    }


def summarize(plan: Plan, settings: Settings | None = None) -> dict[str, Any]:
    """Return the plan's outcomes: one entry per goal per scale it was rated on, and the GAS T-score."""
    threshold = (settings or Settings()).gbo_reliable_change
    entries = []
    for goal in plan.goals:
        for scale in OUTCOME_SCALES:
            ratings = [r for r in goal.ratings if r.scale == scale]
            if ratings:
                entries.append(_entry(goal, scale, ratings, threshold))
    return {
        "plan_id": plan.id,
        "goals": entries,
        "gas": _gas(plan, entries),
        "reliable_change": {"gbo": threshold, "source": GBO_SOURCE},
    }

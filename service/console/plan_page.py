"""The console's plan page: the plan as the team agreed it, its progress and outcome charts, its timeline, and
its sync panel (conflicts, outbox, deliveries)."""

from __future__ import annotations

from datetime import datetime

from flask import render_template

from service.api.container import container
from service.api.plans import outbox_dict
from service.console import chart, labels, outcomes_chart
from service.console.conflicts import _value_text, ehr_change, ehr_side, value_kind
from service.console.plan_words import (
    STATE_WORDS,
    _agreements,
    _contingencies,
    _instant,
    _member_name,
    _pretty,
    _role,
    _status_change,
    _strict,
    _target_rows,
    _timeline_entry,
    patient_label,
)
from service.domain.errors import NotFound
from service.notify import subscriptions as subscription_use
from service.services.history import plan_history
from service.services.outcomes import summarize
from service.sync.engine import sync_status

DONE_SHOWN = 20  # finished outbox entries and deliveries a plan's page shows (every open or dead one is)
TIMELINE_SHOWN = 30  # the latest changes of a plan its page shows (GET /plans/{id}/history has them all)


def _plan_page(plan_id: str, typed: dict[int, tuple[str, str]] | None = None) -> str:
    """Render a plan as the team agreed it, the progress charts, and its sync panel; `typed` holds a value
    given for a conflict that was not taken (conflict id -> (the text given, why not)), shown by its field."""
    typed = typed or {}
    c = container()
    show_names = c.settings.console_show_names
    with c.uow() as uow:
        found = uow.plans.get(plan_id)
        if found is None:
            raise NotFound(f"plan {plan_id} does not exist")
        entries, older_done = uow.outbox.for_plan(plan_id, done_shown=DONE_SHOWN)
        outbox = [outbox_dict(r) for r in entries]
        sent, older_delivered = uow.deliveries.for_plan(plan_id, delivered_shown=DONE_SHOWN)
        deliveries = [subscription_use.delivery_dict(r) for r in sent]
        subscribers = {s.id: (s.url, s.ordering) for s in uow.subscriptions.list()}
        outcome = uow.sync.state(plan_id).last_outcome  # read only: this unit of work is never committed
        last_change = uow.history.last_sequence(plan_id)
        history = plan_history(uow, plan_id, limit=TIMELINE_SHOWN, after=max(last_change - TIMELINE_SHOWN, 0))
        links = {
            x.local_key: {
                "type": x.resource_type,
                "id": x.fhir_id,
                "version": x.version_id,
                "read": _instant(x.synced_at),
            }
            for x in uow.links.for_plan(plan_id)
        }
    status = sync_status(c.uow(), plan_id)
    outcomes = summarize(found, c.settings)
    names = {m.id: _member_name(found, m.id, show_names) for m in found.team}
    threshold = outcomes["reliable_change"]["gbo"]
    gbo = {e["goal_id"]: e for e in outcomes["goals"] if e["scale"] == "gbo"}
    goals = []
    for index, goal in enumerate(found.goals):
        series = chart.goal_series(goal)
        words = chart.concept_text(goal.description)
        rated = outcomes_chart.gbo_chart(gbo[goal.id], words, threshold, names) if goal.id in gbo else None
        goals.append(
            {
                "goal": goal,
                "description": chart.concept_text(goal.description),
                "status": labels.label("goal_status", goal.lifecycle_status),
                "status_change": _status_change(goal),
                "priority": labels.concept_label("priority", goal.priority, "not set"),
                "achievement": labels.concept_label("achievement", goal.achievement),
                "proposed_by": _member_name(found, goal.proposed_by, show_names) if goal.proposed_by else None,
                "agreements": _agreements(found, goal, show_names),
                "targets": _target_rows(goal),
                "contingencies": _contingencies(found, goal, show_names),
                "series": series,
                "svg": chart.progress_svg(series, f"chart-{index}") if series else None,
                "gbo": rated,
                "gbo_svg": outcomes_chart.gbo_svg(rated, f"gbo-{index}") if rated else None,
                "gbo_table": outcomes_chart.gbo_table(rated, f"gbo-{index}-table") if rated else None,
            }
        )
    gas_goals = outcomes_chart.gas_goals(
        outcomes,
        {g.id: chart.concept_text(g.description) for g in found.goals},
        {g.id: g.gas_levels for g in found.goals},
    )
    t_score = outcomes_chart.t_score_of(outcomes)
    gas = (
        {
            "svg": outcomes_chart.gas_svg(gas_goals, t_score, "gas"),
            "table": outcomes_chart.gas_table(gas_goals, t_score, "gas-table"),
            "baseline_t_score": (outcomes.get("gas") or {}).get("baseline_t_score"),
        }
        if gas_goals
        else None
    )
    base = (c.settings.fhir_base_url or "").rstrip("/")
    resources = [{**r, "url": f"{base}/{r['type']}/{r['id']}" if base and r["id"] else None} for r in status.resources]
    steps = [
        {
            "title": s.title or s.description or chart.concept_text(s.code) or s.id,
            "status": labels.label("step_status", s.status),
            "owner": _member_name(found, s.owner, show_names),
            "due": s.due_date or "—",
            "goals": ", ".join(
                chart.concept_text(g.description) for g in (found.goal(i) for i in s.goal_ids) if g is not None
            ),
        }
        for s in found.steps
    ]
    team = [
        {"name": _member_name(found, m.id, show_names), "role": _role(m), "kind": m.kind}
        for m in found.team
        if m.in_team
    ]
    conflicts = []
    for x in status.conflicts:
        kind = value_kind(x)
        given, error = typed.get(x["id"], (_value_text(x["ours"], kind), ""))
        side = ehr_side(x["path"], links)
        origin = x["ehr"]  # what the pull that opened (or last moved) the conflict read: resource, version, who, when
        if origin:
            rtype, _, rid = origin["resource"].partition("/")
            read = side["read"] if side and (side["type"], side["id"]) == (rtype, rid) else None
            side = {"type": rtype, "id": rid, "version": origin["version"], "read": read}
        conflicts.append(
            {
                **x,
                "base": _pretty(x["base"]),
                "ours": _pretty(x["ours"]),
                "theirs": _pretty(x["theirs"]),
                "noticed": _instant(datetime.fromisoformat(x["created_at"])),
                "ehr": {**side, "url": f"{base}/{side['type']}/{side['id']}" if base else None} if side else None,
                "changed": ehr_change(origin),
                "kind": kind,
                "given": given,
                "error": error,
            }
        )
    return render_template(
        "plan.html",
        plan=found,
        plan_status=labels.label("plan_status", found.status),
        patient=patient_label(found, show_names),
        team=team,
        goals=goals,
        steps=steps,
        status=status,
        words=STATE_WORDS,
        resources=resources,
        outcome=_pretty(outcome) if outcome else None,
        conflicts=conflicts,
        gas=gas,
        timeline=[_timeline_entry(found, e, names) for e in reversed(history)],
        more_history=bool(history) and history[0]["sequence"] > 1,
        outbox=outbox,
        older_done=older_done,
        older_delivered=older_delivered,
        deliveries=[
            {**d, "url": subscribers.get(d["subscription_id"], ("", ""))[0], "strict": _strict(subscribers, d)}
            for d in deliveries
        ],
        signed_in=True,
    )

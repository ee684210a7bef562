"""The console's pages: sign-in, plans, a plan with its charts, and its sync panel with the operating actions."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from service.api.auth import key_is_valid
from service.api.container import container, utcnow
from service.api.plans import outbox_dict, replay_outbox_entry
from service.api.throttle import Throttled
from service.console import chart, labels, listing, outcomes_chart, security
from service.domain.errors import Conflict, NotFound, PlanbridgeError, RuleViolation
from service.domain.model import Goal, Member, Plan
from service.notify import subscriptions as subscription_use
from service.services.history import plan_history
from service.services.outcomes import summarize
from service.sync.adopt import IMPORTED
from service.sync.engine import conflict_dict, resolve_conflict, sync_status

log = logging.getLogger(__name__)

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
SYNC_STATES = ("in_sync", "pending", "failed", "conflicted")
PAGE_SIZE = 50  # plans on one page of the list
DONE_SHOWN = 20  # finished outbox entries and deliveries a plan's page shows (every open or dead one is)
TIMELINE_SHOWN = 30  # the latest changes of a plan its page shows (GET /plans/{id}/history has them all)
PLAN_ID_MAX = 128  # the longest plan id the store holds
STATE_WORDS = {"in_sync": "In sync", "pending": "Pending", "failed": "Failed", "conflicted": "Conflicted"}
OPEN_PAGES = ("console.sign_in", "console.static")
MAX_ROW_ID = 2**31 - 1  # larger ids cannot exist (INTEGER columns on PostgreSQL)
# An action's notice is shown in the section it was taken in, with this id, and gets the focus, so the
# person who acted reads what happened where they are (a screen reader announces it).
NOTICE = "notice"


def _bounded(kind: str, value: int) -> int:
    if not 0 < value <= MAX_ROW_ID:
        raise NotFound(f"{kind} {value} does not exist")
    return value


@bp.record_once
def _setup(state: Any) -> None:
    settings = state.app.extensions["planbridge"].settings
    security.configure(state.app, settings.session_secret, settings.public_url)


def _fingerprint_of(key: str) -> str:
    return security.key_fingerprint(key, str(current_app.secret_key).encode())


def _fingerprints() -> set[str]:
    return {_fingerprint_of(k) for k in container().settings.api_keys}


def _signed_in() -> bool:
    """Tell whether the cookie's session is live: signed, unexpired, its key configured, and open in the
    database (signing out closes it there, so a copy of the cookie opens nothing afterwards)."""
    if "planbridge_signed_in" not in g:
        live = security.session_is_live(dict(session), _fingerprints())
        g.planbridge_signed_in = live and container().console_sessions.is_live(str(session["sid"]), utcnow())
    return bool(g.planbridge_signed_in)


def _csrf_token() -> str:
    """Return the session's CSRF token, making one for a new (even signed-out) session."""
    if "csrf" not in session:
        session["csrf"] = security.new_token()
    return session["csrf"]


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": _csrf_token, "CSRF_FIELD": security.CSRF_FIELD}


def _refused(reason: str) -> ResponseReturnValue:
    log.warning("console request refused: %s", reason)
    return render_template("error.html", title="Refused", message=reason, signed_in=False), 403


@bp.before_request
def _guard() -> ResponseReturnValue | None:
    if request.endpoint == "console.static":
        return None
    if request.method not in ("GET", "HEAD", "OPTIONS") and not security.token_matches(
        session.get("csrf"), request.form.get(security.CSRF_FIELD)
    ):
        return _refused("the form's security token is missing or wrong; reload the page and try again")
    if request.endpoint not in OPEN_PAGES and not _signed_in():
        session.pop("sid", None)
        return redirect(url_for("console.sign_in"))
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(PlanbridgeError)
def _planbridge_error(error: PlanbridgeError) -> ResponseReturnValue:
    status = 404 if isinstance(error, NotFound) else 409 if isinstance(error, Conflict) else 422
    return render_template("error.html", title="Not done", message=error.detail, signed_in=_signed_in()), status


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    """Show the sign-in form; a valid API key opens a session (the key itself is not kept)."""
    error = None
    if request.method == "POST":
        c = container()
        keys = c.settings.api_keys
        presented = request.form.get("api_key", "").strip()
        scopes = c.throttle.scopes(request.remote_addr, presented) if keys and presented else []
        if scopes:
            try:
                c.throttle.check(scopes, "console")
            except Throttled as refused:
                log.warning("console sign-in throttled")
                message = f"Too many keys that were not valid; try again in {refused.retry_after} seconds."
                page = render_template("sign_in.html", error=message, signed_in=False)
                return page, 429, {"Retry-After": str(refused.retry_after)}
        if keys and key_is_valid(presented, keys):
            _close_session()  # a session the browser held before is over: a new id, never a reused one
            session_id, now = security.new_token(), utcnow()  # real time, as the cookie's expiry is
            c.console_sessions.open(session_id, now, now + timedelta(seconds=security.SESSION_SECONDS))
            session.update(
                sid=session_id,
                exp=int(now.timestamp()) + security.SESSION_SECONDS,
                kfp=_fingerprint_of(presented),
                csrf=security.new_token(),
            )
            session.permanent = True
            log.info("console sign-in")
            return redirect(url_for("console.plans"))
        if scopes:
            c.throttle.failed(scopes, "console")
        log.warning("console sign-in refused")
        error = "That key is not valid." if keys else "The console is off: PLANBRIDGE_API_KEYS is not set."
    elif _signed_in():
        return redirect(url_for("console.plans"))
    return render_template("sign_in.html", error=error, signed_in=False), 401 if error else 200


def _close_session() -> None:
    """Close the cookie's session in the database (if it names one) and empty the cookie."""
    session_id = session.get("sid")
    if isinstance(session_id, str) and session_id:
        container().console_sessions.close(session_id)
    session.clear()
    g.planbridge_signed_in = False


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    """End the session, in the database too: the cookie, or any copy of it, opens nothing afterwards."""
    _close_session()
    flash("You are signed out.")
    return redirect(url_for("console.sign_in"))


def _instant(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def patient_label(plan: Plan, show_names: bool) -> str:
    """Return how the console names a plan's patient: the display name when allowed, else the masked MRN."""
    if show_names and plan.patient.display_name:
        return plan.patient.display_name
    return security.mask_mrn(plan.patient.mrn)


@bp.get("/")
def plans() -> ResponseReturnValue:
    """List plans a page at a time with their patient, status, sync state and open conflicts, those with open
    conflicts first; ?state= filters by sync state, ?q= finds a plan id (or part of one) or an MRN, ?part=
    and ?after= start the page after that plan id in that part of the list."""
    wanted = request.args.get("state") or None
    if wanted is not None and wanted not in SYNC_STATES:
        wanted = None
    search = request.args.get("q", "").strip()[: listing.SEARCH_MAX]
    after = request.args.get("after", "")
    part = request.args.get("part", listing.PARTS[0])
    if len(after) > PLAN_ID_MAX or part not in listing.PARTS:
        after, part = "", listing.PARTS[0]  # no plan id is that long: start from the first
    c = container()
    with c.uow() as uow:
        assert uow.session is not None
        page = listing.plans_page(
            uow.session, limit=PAGE_SIZE, part=part, after=after, sync_status=wanted, search=search
        )
    rows = [
        {
            "id": s.plan.id,
            "title": s.plan.title,
            "patient": patient_label(s.plan, c.settings.console_show_names),
            "status": labels.label("plan_status", s.plan.status),
            "sync": s.sync_status,
            "last_synced": _instant(s.last_synced),
            "conflicts": s.open_conflicts,
        }
        for s in page.rows
    ]
    return render_template(
        "plans.html",
        rows=rows,
        total=page.total,
        conflicted=page.conflicted,
        after=after,
        following=page.following,
        wanted=wanted,
        search=search,
        states=SYNC_STATES,
        words=STATE_WORDS,
        signed_in=True,
    )


def _member_name(plan: Plan, member_id: str | None, show_names: bool) -> str:
    if not member_id:
        return "nobody yet"
    member = plan.member(member_id)
    if member is None:
        return member_id
    if member.kind == "patient" and not show_names:
        return "the patient"
    return member.name or member.id


def _role(member: Member) -> str:
    return chart.concept_text(member.role) or member.kind.replace("-", " ")


def _agreements(plan: Plan, goal: Goal, show_names: bool) -> list[dict[str, str]]:
    """Return each team member's agreement with a goal in words; members who gave none are pending."""
    seen = {a.member_id for a in goal.agreements}
    rows = [
        {"who": _member_name(plan, a.member_id, show_names), "status": a.status or "pending"} for a in goal.agreements
    ]
    rows += [
        {"who": _member_name(plan, m.id, show_names), "status": "pending"}
        for m in plan.team
        if m.in_team and m.id not in seen
    ]
    return rows


def _target_rows(goal: Goal) -> list[dict[str, str]]:
    rows = []
    for target in goal.targets:
        words = chart.target_bounds(target)[2] or target.text or chart.concept_text(target.concept)
        if target.boolean is not None:
            words = "yes" if target.boolean else "no"
        due = target.due_date or chart.quantity_text(target.due_duration) or "no due date"
        rows.append({"measure": chart.concept_text(target.measure) or "—", "detail": words or "—", "due": due})
    return rows


def _strict(subscribers: dict[int, tuple[str, str]], delivery: dict[str, Any]) -> bool:
    return subscribers.get(delivery["subscription_id"], ("", ""))[1] == "strict"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _status_change(goal: Goal) -> str:
    """Return when and why a goal's status last changed, in words ("" when neither is recorded)."""
    parts = []
    when = chart.parse_instant(goal.status_date)
    if when is not None:
        parts.append(f"since {chart.day_label(when.date())}")
    if goal.status_reason:
        parts.append(f"reason: {goal.status_reason}")
    return "; ".join(parts)


def _contingencies(plan: Plan, goal: Goal, show_names: bool) -> list[dict[str, str]]:
    """Return a goal's "if …, then …" plans with who acts on each, in words."""
    return [
        {"if": c.if_, "then": c.then, "owner": _member_name(plan, c.owner, show_names) if c.owner else "anyone"}
        for c in goal.contingencies
    ]


PATH_ITEM = re.compile(r"(goals|steps|team)\[id=([^\]]+)\](?:\.(?:check_ins|ratings)\[id=([^\]]+)\])?")


def ehr_side(path: str, links: dict[str, Any]) -> Any | None:
    """Return the link (FHIR resource, version last read, when) holding a conflict's path on the EHR side:
    the check-in's Observation, the goal's Goal, the CareTeam for the team, else the CarePlan."""
    match = PATH_ITEM.match(path)
    keys = []
    if match and match.group(1) == "goals":
        keys += [f"observation:{match.group(2)}/{match.group(3)}"] if match.group(3) else []
        keys.append(f"goal:{match.group(2)}")
    elif match and match.group(1) == "team":
        keys.append("careteam")
    keys.append("careplan")
    return next((links[k] for k in keys if k in links), None)


def ehr_change(origin: dict[str, Any] | None) -> dict[str, str]:
    """Return who changed a conflict's EHR side and when, in words: the reference or meta.source URI the pull
    recorded (never a name) and the version's meta.lastUpdated; "not recorded" for what the server did not say."""
    origin = origin or {}
    at = origin.get("changed_at")
    when = None
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            when = _instant(datetime.fromisoformat(at))
    return {"by": origin.get("changed_by") or "not recorded", "at": when or "not recorded"}


def value_kind(conflict: dict[str, Any]) -> str:
    """Return how a typed value for a conflict is read: "text" when either side is a string (what_matters, a
    status, a note), else "json" (a number, a list, an object)."""
    return "text" if isinstance(conflict["ours"], str) or isinstance(conflict["theirs"], str) else "json"


def _value_text(value: Any, kind: str) -> str:
    if kind == "text":
        return value if isinstance(value, str) else ""
    return json.dumps(value, indent=2, ensure_ascii=False)


ITEM = re.compile(r"(goals|steps|team)\[id=([^\]]+)\]")


def _path_words(plan: Plan, path: str, names: dict[str, str]) -> str:
    """A plan path with its goal, step or member named: goals[id=g].priority -> goal “Walk more”.priority."""

    def named(match: re.Match[str]) -> str:
        kind, item_id = match.group(1), match.group(2)
        if kind == "goals":
            goal = plan.goal(item_id)
            return f"goal “{chart.concept_text(goal.description)}”" if goal else f"goal {item_id}"
        if kind == "steps":
            step = next((s for s in plan.steps if s.id == item_id), None)
            return f"step “{step.title or step.id}”" if step else f"step {item_id}"
        return f"team member {names.get(item_id, item_id)}"

    return "the whole plan" if path == "*" else ITEM.sub(named, path)


def _grouped_paths(plan: Plan, paths: list[str], names: dict[str, str]) -> list[str]:
    """The paths a change touched, in words, those of one goal, step or member together: the paths
    goals[id=g].lifecycle_status and goals[id=g].status_reason -> goal “Walk more”: lifecycle status, status reason."""
    grouped: dict[str, list[str]] = {}
    for path in paths:
        match = ITEM.match(path)
        item = _path_words(plan, match.group(0), names) if match else ""
        rest = path[match.end() :].lstrip(".") if match else path
        grouped.setdefault(item, []).append(_path_words(plan, rest, names).replace("_", " ") if rest else "")
    out = []
    for item, fields in grouped.items():
        fields = [f for f in fields if f]
        out.append(f"{item}: {', '.join(fields)}" if item and fields else item or ", ".join(fields))
    return out


def _timeline_entry(plan: Plan, entry: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A plan history entry in words: when, from whom (the team system and members, or the EHR's resource
    and version), what kind of change, and what it changed."""
    at = chart.parse_instant(entry["at"])
    what = entry["event_type"].replace("ehr.", "EHR ").replace(".", " ").replace("_", " ")
    if entry["event_type"] == IMPORTED:
        who = "an import (planbridge plans import)"
    elif entry["source"] == "team" and entry["team"]:
        members = ", ".join(names.get(m, m) for m in entry["team"]["members"])
        who = f"the team, through {entry['team']['sender']}" + (f" ({members})" if members else "")
    else:
        ehr = entry["ehr"] or {}
        version = f" version {ehr['resource_version']}" if ehr.get("resource_version") else ""
        outcome = f", {ehr['outcome']}" if ehr.get("outcome") else ""
        who = f"the EHR: {ehr.get('resource_type')}/{ehr.get('resource_id')}{version}{outcome}"
    paths = _grouped_paths(plan, entry["paths"], names)
    more = entry["paths_total"] - len(entry["paths"])
    return {
        "at": at.strftime("%Y-%m-%d %H:%M UTC") if at else entry["at"],
        "source": entry["source"],
        "what": what[:1].upper() + what[1:],
        "who": who,
        "paths": paths,
        "more": more,
        "version": entry["plan_version"],
    }


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


@bp.get("/plans/<plan_id>")
def plan(plan_id: str) -> ResponseReturnValue:
    """Show a plan as the team agreed it, the progress charts, and its sync panel."""
    return _plan_page(plan_id)


def _back_to_plan(plan_id: str, message: str, category: str) -> ResponseReturnValue:
    """Say what was done (on the plan page's notice) and go back to the plan."""
    flash(message, category)
    return redirect(url_for("console.plan", plan_id=plan_id, _anchor=NOTICE))


VALUE_MAX = 20_000  # characters of a typed value: far more than any field of a plan holds


def _typed_value(text: str, kind: str) -> Any:
    """Read the value typed for a conflict: the text itself, or JSON; ValueError says why not."""
    if len(text) > VALUE_MAX:
        raise ValueError(f"the value is longer than {VALUE_MAX} characters")
    if kind == "text":
        text = text.replace("\r\n", "\n").strip()  # a browser's line ends; FHIR strings have no outer blanks
        if not text:
            raise ValueError("enter the value to keep, or take ours or theirs")
        return text
    if not text.strip():
        raise ValueError("enter the value to keep as JSON, or take ours or theirs")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"that is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


@bp.post("/conflicts/<int:conflict_id>/resolve")
def resolve(conflict_id: int) -> ResponseReturnValue:
    """Resolve a conflict by taking ours, theirs or a typed value (the API's use case); back to the plan.

    A typed value that cannot be taken (not JSON, empty, or breaking one of the plan's rules) shows the plan
    again, 422, with the reason beside the field and the text as it was given."""
    take = request.form.get("take", "")
    if take not in ("ours", "theirs", "value"):
        message = "choose ours, theirs or a value"
        return render_template("error.html", title="Not done", message=message, signed_in=True), 400
    c = container()
    _bounded("conflict", conflict_id)
    value = None
    if take == "value":
        with c.uow() as uow:
            held = conflict_dict(uow.sync.conflict(conflict_id))
        text = request.form.get("value", "")
        try:
            value = _typed_value(text, value_kind(held))
            done = resolve_conflict(c.uow(), c.clock, conflict_id, "value", value)
        except (ValueError, RuleViolation) as refused:
            reason = refused.detail if isinstance(refused, RuleViolation) else str(refused)
            log.info("console conflict value refused: conflict %s", conflict_id)
            return _plan_page(held["plan_id"], {conflict_id: (text[:VALUE_MAX], reason)}), 422
        return _back_to_plan(
            done["plan_id"], f"Conflict {conflict_id} ({done['path']}) resolved: took the value given.", "conflicts"
        )
    done = resolve_conflict(c.uow(), c.clock, conflict_id, take)
    return _back_to_plan(
        done["plan_id"], f"Conflict {conflict_id} ({done['path']}) resolved: took {take}.", "conflicts"
    )


@bp.post("/outbox/<int:entry_id>/replay")
def replay_outbox(entry_id: int) -> ResponseReturnValue:
    """Queue a dead outbox entry again (the API's use case); back to the plan."""
    c = container()
    done = replay_outbox_entry(c.uow(), _bounded("outbox entry", entry_id), c.clock())
    return _back_to_plan(done["plan_id"], f"Outbox entry {entry_id} queued again.", "outbox")


@bp.post("/deliveries/<int:delivery_id>/replay")
def replay_delivery(delivery_id: int) -> ResponseReturnValue:
    """Queue a dead or failed delivery again (the API's use case); back to the plan."""
    c = container()
    done = subscription_use.replay_delivery(c.uow(), _bounded("delivery", delivery_id), c.clock())
    return _back_to_plan(done["plan_id"], f"Delivery {delivery_id} queued again.", "deliveries")


@bp.post("/deliveries/<int:delivery_id>/skip")
def skip_delivery(delivery_id: int) -> ResponseReturnValue:
    """Give up on a dead or failed delivery (the API's use case); back to the plan."""
    c = container()
    done = subscription_use.skip_delivery(c.uow(), _bounded("delivery", delivery_id), c.clock())
    return _back_to_plan(
        done["plan_id"], f"Delivery {delivery_id} skipped: it will not be sent, and holds back nothing.", "deliveries"
    )

"""The console's pages: sign-in, plans, a plan with its charts, and its sync panel with the operating actions."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from service.api.auth import key_is_valid
from service.api.container import container, utcnow
from service.api.plans import replay_outbox_entry
from service.api.throttle import Throttled
from service.console import labels, listing, security
from service.console.conflicts import (
    VALUE_MAX,
    _typed_value,
    ehr_change,  # noqa: F401  (re-exported)
    ehr_side,  # noqa: F401  (re-exported)
    value_kind,
)
from service.console.plan_page import _plan_page
from service.console.plan_words import (
    STATE_WORDS,
    _instant,
    _timeline_entry,  # noqa: F401  (re-exported)
    patient_label,
)
from service.domain.errors import Conflict, NotFound, PlanbridgeError, RuleViolation
from service.notify import subscriptions as subscription_use
from service.sync.engine import conflict_dict, resolve_conflict

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
PLAN_ID_MAX = 128  # the longest plan id the store holds
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


@bp.get("/plans/<plan_id>")
def plan(plan_id: str) -> ResponseReturnValue:
    """Show a plan as the team agreed it, the progress charts, and its sync panel."""
    return _plan_page(plan_id)


def _back_to_plan(plan_id: str, message: str, category: str) -> ResponseReturnValue:
    """Say what was done (on the plan page's notice) and go back to the plan."""
    flash(message, category)
    return redirect(url_for("console.plan", plan_id=plan_id, _anchor=NOTICE))


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
            done = resolve_conflict(c.uow(), c.clock, conflict_id, "value", value, settings=c.settings)
        except (ValueError, RuleViolation) as refused:
            reason = refused.detail if isinstance(refused, RuleViolation) else str(refused)
            log.info("console conflict value refused: conflict %s", conflict_id)
            return _plan_page(held["plan_id"], {conflict_id: (text[:VALUE_MAX], reason)}), 422
        return _back_to_plan(
            done["plan_id"], f"Conflict {conflict_id} ({done['path']}) resolved: took the value given.", "conflicts"
        )
    done = resolve_conflict(c.uow(), c.clock, conflict_id, take, settings=c.settings)
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

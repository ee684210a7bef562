"""GET /plans/{id}/history: every accepted change of a plan, in order, a page at a time (API key needed)."""

from __future__ import annotations

from flask import Blueprint, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import EXCLUDE, Schema, validate

from service.api.auth import require_api_key
from service.api.bodies import MAX_ID, PLAN_ID, json_response, load_query
from service.api.container import container
from service.api.digits import AsciiInteger
from service.domain.errors import NotFound
from service.services.history import DEFAULT_LIMIT, MAX_LIMIT, plan_history

bp = Blueprint("history", __name__)


class HistoryQuerySchema(Schema):
    """GET /plans/{id}/history's query: a page of changes after a given sequence."""

    class Meta:
        unknown = EXCLUDE

    after = AsciiInteger(load_default=0, validate=validate.Range(min=0, max=MAX_ID))
    limit = AsciiInteger(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))


@bp.get("/plans/<plan_id>/history")
@require_api_key
def get_plan_history(plan_id: str) -> ResponseReturnValue:
    """Return the plan's changes oldest first; a Link header (rel="next") points to the next page."""
    query = load_query(HistoryQuerySchema())
    if not PLAN_ID.regex.fullmatch(plan_id):  # not a plan id: nothing to look up (PostgreSQL refuses a NUL)
        raise NotFound(f"plan {plan_id} does not exist", plan_id=plan_id)
    limit = query["limit"]
    entries = plan_history(container().uow(), plan_id, limit=limit + 1, after=query["after"])
    page = entries[:limit]
    answer = json_response(page)
    if len(entries) > limit:
        after = page[-1]["sequence"]
        link = url_for(
            "history.get_plan_history", plan_id=plan_id, **{**request.args.to_dict(), "limit": limit, "after": after}
        )
        answer.headers["Link"] = f'<{link}>; rel="next"'
    return answer

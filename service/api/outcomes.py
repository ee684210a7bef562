"""`GET /plans/{id}/outcomes` (API key): a plan's outcome ratings summed up per goal, and its GAS T-score."""

from __future__ import annotations

from flask import Blueprint
from flask.typing import ResponseReturnValue

from service.api.auth import require_api_key
from service.api.bodies import json_response
from service.api.container import container
from service.api.plans import _plan
from service.services.outcomes import summarize

bp = Blueprint("outcomes", __name__)


@bp.get("/plans/<plan_id>/outcomes")
@require_api_key
def get_outcomes(plan_id: str) -> ResponseReturnValue:
    """Return per goal and scale the baseline, latest rating and change, and the plan's GAS T-score."""
    c = container()
    with c.uow() as uow:
        plan = _plan(uow, plan_id)
    return json_response(summarize(plan, c.settings))

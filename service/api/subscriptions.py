"""Subscriptions of team systems to plan changes, and their delivery log (API key needed)."""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from service.api.auth import require_api_key
from service.api.bodies import json_response, load_body, page_response
from service.api.container import container
from service.domain.errors import InvalidInput
from service.notify import subscriptions as use
from service.notify.ssrf import OutboundGuard
from service.store.uow import MAX_ROW_ID

bp = Blueprint("subscriptions", __name__)
DELIVERY_STATUSES = ("pending", "failed", "delivered", "dead")


class SubscriptionSchema(Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    event_types = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)), required=True, validate=validate.Length(min=1, max=64)
    )
    description = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=512))


@bp.post("/subscriptions")
@require_api_key
def create_subscription() -> ResponseReturnValue:
    """Register a subscription; the answer carries its signing secret, shown this once."""
    body = load_body(SubscriptionSchema(), required=True)
    c = container()
    guard = OutboundGuard(c.settings.outbound_allow)
    created = use.subscribe(c.uow(), guard, body["url"], body["event_types"], body["description"], c.clock())
    return json_response(created, 201)


@bp.get("/subscriptions")
@require_api_key
def list_subscriptions() -> ResponseReturnValue:
    """List subscriptions (?status=active|disabled), oldest first."""
    status = request.args.get("status")
    if status is not None and status not in ("active", "disabled"):
        raise InvalidInput("status must be active or disabled", {"status": status})
    with container().uow() as uow:
        return json_response([use.subscription_dict(r) for r in uow.subscriptions.list(status)])


@bp.get("/subscriptions/<int:subscription_id>")
@require_api_key
def get_subscription(subscription_id: int) -> ResponseReturnValue:
    """Return one subscription (without its secret)."""
    with container().uow() as uow:
        return json_response(use.subscription_dict(uow.subscriptions.get(subscription_id)))


@bp.delete("/subscriptions/<int:subscription_id>")
@require_api_key
def delete_subscription(subscription_id: int) -> ResponseReturnValue:
    """Delete a subscription and its delivery log."""
    use.unsubscribe(container().uow(), subscription_id)
    return Response(status=204)


@bp.post("/subscriptions/<int:subscription_id>/enable")
@require_api_key
def enable_subscription(subscription_id: int) -> ResponseReturnValue:
    """Enable a subscription again; the deliveries it holds become due now."""
    c = container()
    return json_response(use.set_enabled(c.uow(), subscription_id, True, c.clock()))


@bp.post("/subscriptions/<int:subscription_id>/disable")
@require_api_key
def disable_subscription(subscription_id: int) -> ResponseReturnValue:
    """Disable a subscription: its deliveries wait, new changes are not queued for it."""
    c = container()
    return json_response(use.set_enabled(c.uow(), subscription_id, False, c.clock()))


@bp.get("/subscriptions/<int:subscription_id>/deliveries")
@require_api_key
def list_deliveries(subscription_id: int) -> ResponseReturnValue:
    """Return the delivery log of a subscription, oldest first, a page at a time (?status=, ?plan=,
    ?limit= up to 1000, ?after= a delivery id; a Link header, rel="next", points to the next page)."""
    status = request.args.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(DELIVERY_STATUSES)}", {"status": status})
    limit = request.args.get("limit", "200")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 1000:
        raise InvalidInput("limit must be a number from 1 to 1000", {"limit": limit})
    after = request.args.get("after", "0")
    if not (after.isascii() and after.isdigit()) or int(after) > MAX_ROW_ID:
        raise InvalidInput(f"after must be a delivery id from 0 to {MAX_ROW_ID}", {"after": after})
    with container().uow() as uow:
        uow.subscriptions.get(subscription_id)
        rows = uow.deliveries.list(subscription_id, status, request.args.get("plan"), int(limit) + 1, int(after))
        deliveries = [use.delivery_dict(r) for r in rows]
        return page_response(deliveries, int(limit), "subscriptions.list_deliveries", subscription_id=subscription_id)


@bp.post("/deliveries/<int:delivery_id>/replay")
@require_api_key
def replay_delivery(delivery_id: int) -> ResponseReturnValue:
    """Queue a dead or failed delivery again, due now, with its attempts reset."""
    c = container()
    return json_response(use.replay_delivery(c.uow(), delivery_id, c.clock()))

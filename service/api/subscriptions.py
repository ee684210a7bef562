"""Subscriptions of team systems to plan changes, and their delivery log (API key needed)."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, ValidationError, fields, validate

from mappings.fhirtext import FORBIDDEN
from service.api.auth import require_api_key
from service.api.bodies import PageQuerySchema, json_response, load_body, load_query, page_response
from service.api.container import container
from service.api.digits import AsciiInteger
from service.api.schemas.fhirtypes import FullMatch, fhir_uri
from service.domain.errors import InvalidInput
from service.notify import subscriptions as use
from service.notify.ssrf import OutboundGuard, unreadable
from service.store.uow import MAX_ROW_ID

bp = Blueprint("subscriptions", __name__)
DELIVERY_STATUSES = ("pending", "failed", "delivered", "dead", "skipped")


CONTROL = "must hold no control character other than tab, CR and LF"


def _readable_url(url: str) -> None:
    """Refuse a URL whose parts cannot be told (`http://[127.0.0.1]/`, `http://[::1/`: 400, not 500), and an
    http(s) URL without a host (`http://`, `http:///x`) or with a port that is no port (`:99999`, `:abc`)."""
    reason = unreadable(url)
    if reason is not None:
        raise ValidationError(f"not a readable URL: {reason}")


class SubscriptionSchema(Schema):
    # No NUL or other control character reaches the database (PostgreSQL refuses a NUL): 400, not 500.
    url = fields.String(required=True, validate=[*fhir_uri(2048), _readable_url])
    event_types = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)), required=True, validate=validate.Length(min=1, max=64)
    )
    description = fields.String(
        load_default=None, allow_none=True, validate=[validate.Length(max=512), FullMatch(f"[^{FORBIDDEN}]*", CONTROL)]
    )
    ordering = fields.String(load_default=use.DEFAULT_ORDERING, validate=validate.OneOf(use.ORDERINGS))


class RotateSecretSchema(Schema):
    """POST /subscriptions/{id}/rotate-secret: how long the replaced secret still signs deliveries (seconds)."""

    grace_seconds = fields.Integer(
        strict=True,
        load_default=int(use.SECRET_GRACE.total_seconds()),
        validate=validate.Range(min=0, max=int(use.MAX_SECRET_GRACE.total_seconds())),
    )


class SubscriptionChangeSchema(Schema):
    """PATCH /subscriptions/{id}: what may change on a subscription (its URL and secret may not)."""

    ordering = fields.String(required=True, validate=validate.OneOf(use.ORDERINGS))


@bp.post("/subscriptions")
@require_api_key
def create_subscription() -> ResponseReturnValue:
    """Register a subscription; the answer carries its signing secret, shown this once."""
    body = load_body(SubscriptionSchema(), required=True)
    c = container()
    guard = OutboundGuard(c.settings.outbound_allow)
    created = use.subscribe(
        c.uow(), guard, body["url"], body["event_types"], body["description"], c.clock(), body["ordering"]
    )
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


@bp.patch("/subscriptions/<int:subscription_id>")
@require_api_key
def change_subscription(subscription_id: int) -> ResponseReturnValue:
    """Change a subscription's ordering (`strict` or `best-effort`)."""
    body = load_body(SubscriptionChangeSchema(), required=True)
    c = container()
    return json_response(use.set_ordering(c.uow(), subscription_id, body["ordering"], c.clock()))


@bp.delete("/subscriptions/<int:subscription_id>")
@require_api_key
def delete_subscription(subscription_id: int) -> ResponseReturnValue:
    """Delete a subscription and its delivery log."""
    use.unsubscribe(container().uow(), subscription_id)
    return Response(status=204)


@bp.post("/subscriptions/<int:subscription_id>/rotate-secret")
@require_api_key
def rotate_subscription_secret(subscription_id: int) -> ResponseReturnValue:
    """Give a subscription a new signing secret, shown this once; the one it replaces signs deliveries too
    for `grace_seconds` (default 24 h), then no more."""
    body = load_body(RotateSecretSchema())
    c = container()
    grace = timedelta(seconds=body["grace_seconds"])
    return json_response(use.rotate_secret(c.uow(), subscription_id, c.clock(), grace))


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


class DeliveryQuerySchema(PageQuerySchema):
    """GET /subscriptions/{id}/deliveries' query (delivery ids are INTEGERs: at most 2**31 - 1)."""

    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    after = AsciiInteger(load_default=0, validate=validate.Range(min=0, max=MAX_ROW_ID))
    limit = AsciiInteger(load_default=200, validate=validate.Range(min=1, max=1000))


@bp.get("/subscriptions/<int:subscription_id>/deliveries")
@require_api_key
def list_deliveries(subscription_id: int) -> ResponseReturnValue:
    """Return the delivery log of a subscription, oldest first, a page at a time (?status=, ?plan=,
    ?limit= up to 1000, ?after= a delivery id; a Link header, rel="next", points to the next page)."""
    query = load_query(DeliveryQuerySchema())
    with container().uow() as uow:
        uow.subscriptions.get(subscription_id)
        rows = uow.deliveries.list(
            subscription_id, query.get("status"), query.get("plan"), query["limit"] + 1, query["after"]
        )
        deliveries = [use.delivery_dict(r) for r in rows]
        return page_response(
            deliveries, query["limit"], "subscriptions.list_deliveries", subscription_id=subscription_id
        )


@bp.post("/deliveries/<int:delivery_id>/replay")
@require_api_key
def replay_delivery(delivery_id: int) -> ResponseReturnValue:
    """Queue a dead or failed delivery again, due now, with a full set of attempts (the count goes on)."""
    c = container()
    return json_response(use.replay_delivery(c.uow(), delivery_id, c.clock()))


@bp.post("/deliveries/<int:delivery_id>/skip")
@require_api_key
def skip_delivery(delivery_id: int) -> ResponseReturnValue:
    """Give up on a dead or failed delivery; under strict ordering the plan's later ones go on."""
    c = container()
    return json_response(use.skip_delivery(c.uow(), delivery_id, c.clock()))

"""Reading request bodies through marshmallow schemas, and answering JSON: shared by the JSON API's blueprints."""

from __future__ import annotations

from typing import Any

from flask import Response, json, request, url_for
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from werkzeug.exceptions import UnsupportedMediaType

from service.api.digits import AsciiInteger
from service.api.schemas.fhirtypes import ID as PLAN_ID
from service.domain.errors import InvalidInput

MAX_ID = 2**31 - 1  # row ids are INTEGER (32 bits on PostgreSQL): a larger one names nothing, and overflows there


def json_response(body: Any, status: int = 200, content_type: str = "application/json") -> Response:
    """Answer with a JSON body."""
    return Response(json.dumps(body), status=status, mimetype=content_type)


def error_paths(messages: Any, top: str = "body") -> Any:
    """Return marshmallow's messages keyed by paths only: the messages of a whole object (an "at least one of"
    rule), which marshmallow keys `_schema` inside it, go under the object's own key (`{"data": [...]}`, not
    `{"data": {"_schema": [...]}}`), and those of the whole body under `top`."""

    def fold(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        folded = {key: fold(value) for key, value in node.items()}
        return {
            key: value["_schema"] if isinstance(value, dict) and set(value) == {"_schema"} else value
            for key, value in folded.items()
        }

    folded = fold(messages)
    if isinstance(folded, dict) and "_schema" in folded and top not in folded:
        folded[top] = folded.pop("_schema")
    return folded


def load_body(schema: Schema, required: bool = False) -> dict[str, Any]:
    """Validate the JSON body with `schema`; a missing body is `{}` unless `required`.

    A body sent as anything but JSON (`application/json`, or a `+json` type such as
    `application/merge-patch+json`, which Flask always read as JSON) is `415`, as on the webhook: curl's `-d`
    says form data, and such a body may well be JSON, but it was not said to be, so it is neither read as one
    nor called "not JSON"."""
    if request.get_data(cache=True) and not request.is_json:  # 413 past the body limit
        raise UnsupportedMediaType("send the body as application/json (header Content-Type: application/json)")
    try:
        body = request.get_json(silent=True)  # silent covers what is not JSON, not what nests too deeply
    except RecursionError:
        raise InvalidInput("the body nests too deeply", {"body": "nested too deeply"}) from None
    if body is None and required:
        raise InvalidInput("the body must be a JSON object", {"body": "not JSON"})
    if body is None and request.get_data():
        raise InvalidInput("the body is not valid JSON", {"body": "not JSON"})
    try:
        return schema.load(body or {})
    except ValidationError as exc:
        raise InvalidInput("the request body is invalid", error_paths(exc.normalized_messages())) from None


def load_query(schema: Schema) -> dict[str, Any]:
    """Validate the query string with `schema` (the first of a repeated parameter counts)."""
    try:
        return schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise InvalidInput("the query string is invalid", error_paths(exc.normalized_messages(), "query")) from None


class PageQuerySchema(Schema):
    """A listing's query: a plan to filter by, and a page of rows after a given id (see page_response)."""

    class Meta:
        unknown = EXCLUDE

    plan = fields.String(validate=PLAN_ID)  # a plan id, as events name it: no NUL reaches PostgreSQL
    after = AsciiInteger(load_default=0, validate=validate.Range(min=0, max=MAX_ID))
    limit = AsciiInteger(load_default=100, validate=validate.Range(min=1, max=1000))


def page_response(rows: list[dict[str, Any]], limit: int, endpoint: str, **path: Any) -> Response:
    """Answer with the first `limit` of `rows` (fetched as limit + 1); when there are more, a Link header
    (rel="next") repeats the request's query with `after` the last id shown."""
    page = rows[:limit]
    answer = json_response(page)
    if len(rows) > limit:
        query = {**request.args.to_dict(), "limit": limit, "after": page[-1]["id"], **path}
        answer.headers["Link"] = f'<{url_for(endpoint, **query)}>; rel="next"'
    return answer

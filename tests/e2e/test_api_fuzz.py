"""Schemathesis over the OpenAPI document: no generated request, valid or not, makes the API answer 5xx,
on SQLite and on PostgreSQL, for every operation: /fhir-notifications (with its secret) included."""

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.api.app import create_app
from service.signing import sign_headers
from tests.support import SECRET
from tests.support import settings as make_settings

KEY = "fuzz-key-0123456789abcdef"
NOTIFY_SECRET = "fuzz-notify-secret-0123456789"
# 5xx answers the document promises, because the FHIR server in this test is down: never a 500.
DOCUMENTED_5XX = {("GET", "/readyz", 503), ("POST", "/plans/{plan_id}/sync", 502), ("POST", "/plans/adopt", 502)}


@pytest.fixture
def fuzz_schema(engine):
    # A FHIR server nobody listens on: pulls fail as 502 problems, never as 500s.
    config = make_settings(
        api_keys=(KEY,), fhir_base_url="http://127.0.0.1:9/baseR4", fhir_timeout=1, fhir_notify_secret=NOTIFY_SECRET
    )
    return schemathesis.openapi.from_wsgi("/openapi.json", create_app(config, engine))


def _call(case):
    headers = {"Authorization": f"Bearer {KEY}", "X-Planbridge-Notify-Secret": NOTIFY_SECRET}
    if case.path == "/webhooks/team" and isinstance(case.body, dict):
        raw = json.dumps(case.body).encode()  # signed, so the body itself is what gets tested
        headers.update(sign_headers(SECRET, raw), **{"Content-Type": "application/json"})
        return case.call(headers=headers, data=raw)
    return case.call(headers=headers)


def test_no_generated_request_makes_any_operation_fail(fuzz_schema):
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 12
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=int(os.environ.get("PLANBRIDGE_FUZZ_EXAMPLES", "25")),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case):
            response = _call(case)
            status = response.status_code
            seen.setdefault(f"{case.method} {case.path}", set()).add(status)
            assert status < 500 or (case.method, case.path, status) in DOCUMENTED_5XX, (
                case.method,
                case.path,
                status,
                response.text[:300],
            )

        check()
    # The generated traffic really reached the handlers: signed events were read (accepted, or refused for
    # the plan's state or an unknown plan), malformed ones refused.
    # (which of those answers a given run sees depends on what it generates: at least one of them, always)
    assert seen["POST /webhooks/team"] & {202, 400, 404, 409, 422}
    assert 401 not in seen["GET /plans/{plan_id}"] and 404 in seen["GET /plans/{plan_id}"]
    # Notifications were read, not turned away at the secret: queued re-reads (200) or named faults (400).
    for operation in ("POST /fhir-notifications", "PUT /fhir-notifications/{resource_type}/{resource_id}"):
        assert 401 not in seen[operation] and seen[operation] & {200, 400}

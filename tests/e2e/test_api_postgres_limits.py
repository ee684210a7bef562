"""What schemathesis found on PostgreSQL alone: a NUL in a plan id or a subscription, and a row id past 32 bits,
were 500s there (SQLite takes both). Now the same 4xx on both databases."""

import pytest

from service.api.app import create_app
from tests.support import settings

KEY = "limits-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(engine):
    return create_app(settings(api_keys=(KEY,), outbound_allow=("127.0.0.0/8",)), engine).test_client()


@pytest.mark.parametrize("path", ["/plans/a%00b", "/plans/a%00b/fhir", "/plans/a%00b/sync"])
def test_a_plan_id_with_a_nul_names_no_plan(client, path):
    answer = client.get(path, headers=AUTH)
    assert answer.status_code == 404 and answer.mimetype == "application/problem+json"
    assert client.post("/plans/a%00b/sync", json={"direction": "push"}, headers=AUTH).status_code == 404


@pytest.mark.parametrize("listing", ["/outbox", "/conflicts"])
def test_listings_refuse_a_plan_filter_with_a_nul_and_a_position_past_32_bits(client, listing):
    assert client.get(f"{listing}?plan=a%00b", headers=AUTH).status_code == 400
    assert client.get(f"{listing}?after=2147483648", headers=AUTH).status_code == 400
    assert client.get(f"{listing}?after=2147483647", headers=AUTH).status_code == 200
    assert client.post("/outbox/2147483648/replay", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://127.0.0.1:9/x\x00y", "event_types": ["goal.proposed"]},
        {"url": "http://127.0.0.1:9/x", "event_types": ["goal.proposed"], "description": "a\x00b"},
    ],
    ids=["url", "description"],
)
def test_a_subscription_with_a_nul_is_invalid(client, body):
    answer = client.post("/subscriptions", json=body, headers=AUTH)
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    fine = client.post(
        "/subscriptions", json={**body, "url": "http://127.0.0.1:9/x", "description": "ok"}, headers=AUTH
    )
    assert fine.status_code == 201

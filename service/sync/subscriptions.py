"""Create or update the Subscriptions that make the FHIR server tell planbridge about changes.

R4 Subscription resources have no identifier, so planbridge finds its own by their endpoint (search
parameter `url`) and criteria, and marks them with a `meta.tag`
(https://hl7.org/fhir/R4/subscription.html). One Subscription per watched resource type; each is a
rest-hook with the resource as payload, pointed at `{PLANBRIDGE_PUBLIC_URL}/fhir-notifications`, and
carrying the shared secret in `channel.header`.
"""

from __future__ import annotations

from typing import Any

from mappings import codes
from service.domain.errors import ConfigurationError
from service.fhir.client import FhirClient
from service.settings import Settings

TAG_SYSTEM = "http://planbridge.org/fhir/CodeSystem/subscription"
WATCHED = {"CarePlan": "plan", "Goal": "goal", "CareTeam": "careteam"}


def desired(settings: Settings) -> list[dict[str, Any]]:
    """Return the Subscriptions planbridge wants on the server."""
    if not settings.fhir_notify_secret:
        raise ConfigurationError(
            "PLANBRIDGE_FHIR_NOTIFY_SECRET is not set: notifications could not be authenticated",
            setting="PLANBRIDGE_FHIR_NOTIFY_SECRET",
        )
    out = []
    for resource_type, kind in WATCHED.items():
        system = codes.identifier_system(settings.identifier_base, kind)
        out.append(
            {
                "resourceType": "Subscription",
                "meta": {"tag": [{"system": TAG_SYSTEM, "code": resource_type}]},
                "status": "requested",
                "reason": f"planbridge keeps shared plans in step: {resource_type}s it syncs",
                "criteria": f"{resource_type}?identifier={system}|",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": f"{settings.public_url}/fhir-notifications",
                    "payload": "application/fhir+json",
                    "header": [f"X-Planbridge-Notify-Secret: {settings.fhir_notify_secret}"],
                },
            }
        )
    return out


def subscribe(client: FhirClient, settings: Settings) -> list[dict[str, Any]]:
    """Create each Subscription, or update the one planbridge made before; return what the server holds."""
    held = []
    for subscription in desired(settings):
        found = _ours(client, settings, subscription["criteria"])
        if found:
            subscription["id"] = found[0]["id"]
            stored = client.request(
                "PUT", f"Subscription/{found[0]['id']}", json=subscription, headers={"Prefer": "return=representation"}
            ).json()
        else:
            stored = client.request(
                "POST", "Subscription", json=subscription, headers={"Prefer": "return=representation"}
            ).json()
        held.append(stored)
    return held


def _ours(client: FhirClient, settings: Settings, criteria: str | None = None) -> list[dict[str, Any]]:
    found = client.search("Subscription", {"url": f"{settings.public_url}/fhir-notifications"})
    tagged = [s for s in found if any(t.get("system") == TAG_SYSTEM for t in s.get("meta", {}).get("tag", []))]
    return [s for s in tagged if criteria is None or s.get("criteria") == criteria]


def status(client: FhirClient, settings: Settings) -> list[dict[str, Any]]:
    """Return planbridge's Subscriptions on the server: criteria, status, error, endpoint (secret left out)."""
    found = _ours(client, settings)
    return [
        {
            "id": s.get("id"),
            "criteria": s.get("criteria"),
            "status": s.get("status"),
            "error": s.get("error"),
            "endpoint": s.get("channel", {}).get("endpoint"),
        }
        for s in found
    ]

"""Create or update the Subscriptions that make the FHIR server tell planbridge about changes.

R4 Subscription resources have no identifier, so planbridge finds its own by their endpoint (search
parameter `url`) and criteria, and marks them with a `meta.tag`
(https://hl7.org/fhir/R4/subscription.html). One Subscription per watched resource type; each is a
rest-hook with the resource as payload, pointed at `{PLANBRIDGE_PUBLIC_URL}/fhir-notifications`, and
carrying a secret in `channel.header`.

That header is stored in plain text on the FHIR server: anyone who may read Subscriptions there can read
it. So the header never holds PLANBRIDGE_FHIR_NOTIFY_SECRET itself but a secret of its own subscription,
derived from it: `pbn<generation>.<ResourceType>.<HMAC-SHA256(setting, generation|type)>`. A secret
read from one Subscription authenticates only notifications for that resource type (a PUT of a Goal
needs the Goal Subscription's), and `planbridge subscribe --rotate` moves every Subscription to the next
generation: the generation is recorded in the database (table sync_cursors) before the Subscriptions
are updated, and the previous generation's secrets are still accepted for ROTATION_GRACE after the
rotation (what the server queued or retries with them), then refused; a second rotation retires them at
once. Until the first rotation, the setting itself is also accepted in the header, as it was sent by
planbridge before per-subscription secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mappings import codes
from service.domain.errors import ConfigurationError
from service.fhir.client import FhirClient
from service.settings import Settings

TAG_SYSTEM = "http://planbridge.org/fhir/CodeSystem/subscription"
WATCHED = {"CarePlan": "plan", "Goal": "goal", "CareTeam": "careteam"}
SECRET_HEADER = "X-Planbridge-Notify-Secret"  # noqa: S105  (a header name, not a secret)
ROTATION_GRACE = timedelta(hours=1)  # the previous generation's secrets stay accepted this long after a rotation
GENERATION = "fhir-notify:generation"  # cursor names (sync_cursors): the current generation,
PREVIOUS = "fhir-notify:previous"  # and "<generation>|<ISO instant until which it is accepted>"


@dataclass(frozen=True)
class Rotation:
    """Which generations of notify secrets are accepted: the current one, and the previous one until a time."""

    current: int = 0
    previous: int | None = None
    previous_until: datetime | None = None

    def accepted(self, now: datetime) -> set[int]:
        """Return the generations accepted at `now`."""
        live = self.previous is not None and self.previous_until is not None and now < self.previous_until
        return {self.current} | ({self.previous} if live and self.previous is not None else set())


def notify_secret(setting: str, generation: int, resource_type: str) -> str:
    """Return the secret the Subscription for `resource_type` carries in the given generation."""
    mac = hmac.new(setting.encode(), f"planbridge-notify|{generation}|{resource_type}".encode(), hashlib.sha256)
    return f"pbn{generation}.{resource_type}.{base64.urlsafe_b64encode(mac.digest()).rstrip(b'=').decode()}"


def _generation_of(presented: str) -> tuple[int, str] | None:
    prefix, _, rest = presented.partition(".")
    resource_type, _, _ = rest.partition(".")
    digits = prefix.removeprefix("pbn")
    if not prefix.startswith("pbn") or not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        return None
    return int(digits), resource_type


def is_accepted(
    setting: str, presented: str, rotation: Rotation, now: datetime, resource_type: str | None = None
) -> bool:
    """Tell whether a presented header authenticates a notification (for `resource_type`, when it names one)."""
    if rotation.current == 0 and hmac.compare_digest(presented.encode(), setting.encode()):
        return True  # the setting itself, as planbridge sent it before per-subscription secrets; never rotated
    found = _generation_of(presented)
    if found is None:
        return False
    generation, kind = found
    if kind not in WATCHED or (resource_type is not None and kind != resource_type):
        return False
    if generation not in rotation.accepted(now):
        return False
    return hmac.compare_digest(presented.encode(), notify_secret(setting, generation, kind).encode())


def rotation(uow: Any) -> Rotation:
    """Return the rotation state recorded in the database (read inside an open unit of work)."""
    cursors = uow.sync.cursors("fhir-notify:")
    current = int(cursors.get(GENERATION, "0"))
    previous, _, until = cursors.get(PREVIOUS, "").partition("|")
    if not previous:
        return Rotation(current)
    return Rotation(current, int(previous), datetime.fromisoformat(until))


def current_generation(uow: Any) -> int:
    """Return the generation the Subscriptions should carry now (`uow`: a UnitOfWork, not yet open)."""
    with uow as opened:
        return rotation(opened).current


def rotate(uow: Any, now: datetime, grace: timedelta = ROTATION_GRACE) -> Rotation:
    """Move to the next generation of secrets, accepting the previous one for `grace`; committed at once, so
    every planbridge process accepts the new secrets before the FHIR server is told to send them."""
    with uow as opened:
        before = rotation(opened)
        after = Rotation(before.current + 1, before.current, now + grace)
        opened.sync.set_cursor(GENERATION, str(after.current))
        opened.sync.set_cursor(PREVIOUS, f"{after.previous}|{(now + grace).isoformat()}")
        opened.commit()
    return after


def desired(settings: Settings, generation: int = 0) -> list[dict[str, Any]]:
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
                    "header": [
                        f"{SECRET_HEADER}: {notify_secret(settings.fhir_notify_secret, generation, resource_type)}"
                    ],
                },
            }
        )
    return out


def subscribe(client: FhirClient, settings: Settings, generation: int = 0) -> list[dict[str, Any]]:
    """Create each Subscription, or update the one planbridge made before, carrying the secrets of
    `generation` (current_generation()); return what the server holds."""
    held = []
    for subscription in desired(settings, generation):
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
    """Return planbridge's Subscriptions on the server: criteria, status, error, endpoint, and which secret
    generation the header carries (the secret itself left out)."""
    found = _ours(client, settings)
    return [
        {
            "id": s.get("id"),
            "criteria": s.get("criteria"),
            "status": s.get("status"),
            "error": s.get("error"),
            "endpoint": s.get("channel", {}).get("endpoint"),
            "secret_generation": _header_generation(s),
        }
        for s in found
    ]


def _header_generation(subscription: dict[str, Any]) -> int | str | None:
    for header in subscription.get("channel", {}).get("header", []):
        name, _, value = str(header).partition(":")
        if name.strip().lower() == SECRET_HEADER.lower():
            found = _generation_of(value.strip())
            return found[0] if found else "the setting itself (run planbridge subscribe)"
    return None

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

Adopted plans (service.sync.adopt) are the EHR's resources, without planbridge's identifiers, so those
criteria never match them. For each patient with an adopted plan there are four more Subscriptions,
`CarePlan|CareTeam|Goal|Observation?subject=Patient/<id>`, tagged with the patient's id as well
(ADOPTED_TAG): they match the adopted plan's resources, and the Goals and check-ins the EHR adds to it
later. They carry the same secrets (per resource type and generation) as the others. Adopting creates
them (`follow_adopted`), adopting again finds them by tag and criteria, and `planbridge subscribe`
(`--rotate`) writes them with the others. A plan can stop being adopted (the EHR moves its CarePlan to
another patient, as a merge of patient records does, and a pull records the new subject; or the server
lost the CarePlan and `planbridge sync repair` wrote the plan again under planbridge's identifiers), so
`planbridge subscribe` also deletes the tagged Subscriptions of every patient no adopted plan names any
more (`retire_unadopted`): nothing else would, and the server would notify planbridge of that patient's
changes for ever.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mappings import codes
from service.domain.errors import ConfigurationError, PlanbridgeError
from service.fhir.client import FhirClient
from service.fhir.errors import FhirNotFound
from service.settings import Settings
from service.sync.adopt import adopted_patients

log = logging.getLogger(__name__)

TAG_SYSTEM = "http://planbridge.org/fhir/CodeSystem/subscription"
WATCHED = {"CarePlan": "plan", "Goal": "goal", "CareTeam": "careteam"}
ADOPTED_TAG = "http://planbridge.org/fhir/CodeSystem/subscription-adopted-patient"  # code: the Patient's id
ADOPTED_WATCHED = ("CarePlan", "CareTeam", "Goal", "Observation")  # watched by subject for adopted plans
SIGNED = frozenset({*WATCHED, *ADOPTED_WATCHED})  # the resource types a Subscription's secret is derived for
NOTHING_ADOPTED = "no adopted plan"  # follow_adopted's detail when none of the plans was adopted
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
    if kind not in SIGNED or (resource_type is not None and kind != resource_type):
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


def _require_secret(settings: Settings) -> str:
    if not settings.fhir_notify_secret:
        raise ConfigurationError(
            "PLANBRIDGE_FHIR_NOTIFY_SECRET is not set: notifications could not be authenticated",
            setting="PLANBRIDGE_FHIR_NOTIFY_SECRET",
        )
    return settings.fhir_notify_secret


def _subscription(
    settings: Settings, generation: int, resource_type: str, criteria: str, reason: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    secret = notify_secret(_require_secret(settings), generation, resource_type)
    return {
        "resourceType": "Subscription",
        "meta": {"tag": tags},
        "status": "requested",
        "reason": reason,
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": f"{settings.public_url}/fhir-notifications",
            "payload": "application/fhir+json",
            "header": [f"{SECRET_HEADER}: {secret}"],
        },
    }


def for_patient(settings: Settings, patient_id: str, generation: int = 0) -> list[dict[str, Any]]:
    """Return the Subscriptions that watch the resources of a patient's adopted plans (by subject)."""
    return [
        _subscription(
            settings,
            generation,
            resource_type,
            f"{resource_type}?subject=Patient/{patient_id}",
            f"planbridge keeps adopted plans in step: {resource_type}s of Patient/{patient_id}",
            [{"system": TAG_SYSTEM, "code": resource_type}, {"system": ADOPTED_TAG, "code": patient_id}],
        )
        for resource_type in ADOPTED_WATCHED
    ]


def desired(settings: Settings, generation: int = 0, patients: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Return the Subscriptions planbridge wants on the server: one per watched type by planbridge's
    identifiers, and those of each patient (server id) with adopted plans."""
    out = []
    for resource_type, kind in WATCHED.items():
        system = codes.identifier_system(settings.identifier_base, kind)
        out.append(
            _subscription(
                settings,
                generation,
                resource_type,
                f"{resource_type}?identifier={system}|",
                f"planbridge keeps shared plans in step: {resource_type}s it syncs",
                [{"system": TAG_SYSTEM, "code": resource_type}],
            )
        )
    for patient_id in sorted(set(patients)):
        out.extend(for_patient(settings, patient_id, generation))
    return out


def subscribe(
    client: FhirClient,
    settings: Settings,
    generation: int = 0,
    patients: Iterable[str] = (),
    *,
    still_adopted: Callable[[], Iterable[str]] | None = None,
) -> list[dict[str, Any]]:
    """Create each Subscription (those of `patients` too: the server ids of **every** patient with adopted
    plans, adopted_patient_ids()), or update the one planbridge made before, carrying the secrets of
    `generation` (current_generation()); then delete those watching a patient not among `patients`
    (retire_unadopted; `still_adopted`, when given, is asked again first). Return what the server holds
    (the Subscriptions written). Planbridge's Subscriptions are read once, whatever their number."""
    patients = sorted(set(patients))
    wanted = desired(settings, generation, patients)
    found = _ours(client, settings)
    held = _by_criteria(found)
    written = [_write(client, subscription, held.get(subscription["criteria"])) for subscription in wanted]
    retire_unadopted(client, found, patients, still_adopted)
    return written


def retire_unadopted(
    client: FhirClient,
    found: list[dict[str, Any]],
    patients: Iterable[str],
    still_adopted: Callable[[], Iterable[str]] | None = None,
) -> list[str]:
    """Delete the Subscriptions among `found` (planbridge's, as read from the server) that watch a patient
    not among `patients` (the server ids of the patients with adopted plans); return their references.

    `still_adopted` (e.g. adopted_patient_ids on the database) is asked once more before anything is
    deleted, when there is something to delete: an adoption that committed after `patients` was read, and
    wrote its Subscriptions before `found` was, keeps them. A Subscription the server will not delete is set
    `off` instead (R4: the server stops notifying); one that is already gone is no matter. Logged by ids only.
    """
    keep = set(patients)
    retired = [(s, p) for s in found if (p := patient_of(s)) is not None and p.split("/", 1)[1] not in keep]
    if retired and still_adopted is not None:
        keep |= set(still_adopted())
        retired = [(s, p) for s, p in retired if p.split("/", 1)[1] not in keep]
    done = []
    for subscription, patient in retired:
        ref = f"Subscription/{subscription.get('id')}"
        try:
            client.request("DELETE", ref)
            how = "deleted"
        except FhirNotFound:  # gone already (410 too)
            continue
        except PlanbridgeError:
            try:
                client.request("PUT", ref, json={**subscription, "status": "off"})
                how = "set off"
            except PlanbridgeError as again:
                log.warning("%s (%s): no adopted plan needs it, but it was not deleted: %s", ref, patient, again.code)
                continue
        log.info("%s (%s): no adopted plan needs it any more; %s", ref, patient, how)
        done.append(ref)
    return done


def adopted_patient_ids(uow: Any) -> list[str]:
    """Return the server ids of the patients with adopted plans (`uow`: a UnitOfWork, not yet open)."""
    with uow as opened:
        return sorted({p for p in adopted_patients(opened).values() if p})


def follow_adopted(uow: Any, client: FhirClient, settings: Settings, plan_ids: Iterable[str]) -> dict[str, Any]:
    """After an adoption: make sure the Subscriptions of the adopted plans among `plan_ids` are on the
    server, so the EHR's edits to them are notified. Never raises (the adoption is done either way):
    the answer says what is subscribed, and why not when something is not.

    Returns {"subscribed": bool (every adopted plan is watched), "patients": ["Patient/<id>"],
    "subscriptions": ["Subscription/<id>"], "detail": None or why not}. A Subscription already there with
    the same criteria, endpoint and secret (requested or active) is left as it is; one that differs is
    updated, a missing one created: adopting again never duplicates them.
    """
    with uow as opened:
        found = adopted_patients(opened, plan_ids)
    answer: dict[str, Any] = {"subscribed": False, "patients": [], "subscriptions": [], "detail": None}
    if not found:
        answer["detail"] = NOTHING_ADOPTED
        return answer
    if not settings.fhir_notify_secret:
        answer["detail"] = (
            "nothing subscribed: PLANBRIDGE_FHIR_NOTIFY_SECRET is not set (see `planbridge subscribe`); "
            "EHR edits to adopted plans are found by pulls only"
        )
        return answer
    generation = current_generation(uow)
    endpoint = f"{settings.public_url}/fhir-notifications"
    try:
        for patient_id in sorted({p for p in found.values() if p}):
            tagged = client.search("Subscription", {"url": endpoint, "_tag": f"{ADOPTED_TAG}|{patient_id}"})
            held = _by_criteria(_tagged(tagged))
            for subscription in for_patient(settings, patient_id, generation):
                stored = _write(client, subscription, held.get(subscription["criteria"]), keep_current=True)
                answer["subscriptions"].append(f"Subscription/{stored.get('id')}")
            answer["patients"].append(f"Patient/{patient_id}")
    except PlanbridgeError as exc:
        log.warning("adopted plans: Subscriptions not written: %s", exc.code)
        answer["detail"] = f"not every Subscription was written: {exc.code}: {exc.detail}"[:500]
        return answer
    unwatched = sorted(plan_id for plan_id, patient_id in found.items() if patient_id is None)
    if unwatched:
        answer["detail"] = (
            f"not subscribed: {', '.join(unwatched)} (its CarePlan's subject is not a Patient on the server); "
            "found by pulls only"
        )
    answer["subscribed"] = not unwatched
    return answer


def _current(held: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Tell whether a Subscription on the server already is the one wanted (and not off or in error)."""
    channel, want = held.get("channel", {}), wanted["channel"]
    return (
        held.get("status") in ("requested", "active")
        and held.get("criteria") == wanted["criteria"]
        and all(channel.get(key) == want[key] for key in ("type", "endpoint", "payload", "header"))
    )


def _write(
    client: FhirClient, subscription: dict[str, Any], found: dict[str, Any] | None, keep_current: bool = False
) -> dict[str, Any]:
    """Create the Subscription, or update `found` (left as it is when `keep_current` and it is current)."""
    if found is not None and keep_current and _current(found, subscription):
        return found
    prefer = {"Prefer": "return=representation"}
    if found is not None:
        subscription = {**subscription, "id": found["id"]}
        return client.request("PUT", f"Subscription/{found['id']}", json=subscription, headers=prefer).json()
    return client.request("POST", "Subscription", json=subscription, headers=prefer).json()


def _by_criteria(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Index Subscriptions by criteria (the first of any duplicates)."""
    out: dict[str, dict[str, Any]] = {}
    for subscription in found:
        out.setdefault(str(subscription.get("criteria")), subscription)
    return out


def _tagged(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in found if any(t.get("system") == TAG_SYSTEM for t in s.get("meta", {}).get("tag", []))]


def _ours(client: FhirClient, settings: Settings, criteria: str | None = None) -> list[dict[str, Any]]:
    tagged = _tagged(client.search("Subscription", {"url": f"{settings.public_url}/fhir-notifications"}))
    return [s for s in tagged if criteria is None or s.get("criteria") == criteria]


def patient_of(subscription: dict[str, Any]) -> str | None:
    """Return `Patient/<id>` for a Subscription watching a patient's adopted plans, else None."""
    tags = subscription.get("meta", {}).get("tag", [])
    code = next((t.get("code") for t in tags if isinstance(t, dict) and t.get("system") == ADOPTED_TAG), None)
    return f"Patient/{code}" if isinstance(code, str) and code else None


def status(client: FhirClient, settings: Settings) -> list[dict[str, Any]]:
    """Return planbridge's Subscriptions on the server: criteria, status, error, endpoint, which secret
    generation the header carries (the secret itself left out), and for those watching adopted plans, the
    patient (`adopted_patient`: `Patient/<id>`, else None)."""
    found = _ours(client, settings)
    return [
        {
            "id": s.get("id"),
            "criteria": s.get("criteria"),
            "status": s.get("status"),
            "error": s.get("error"),
            "endpoint": s.get("channel", {}).get("endpoint"),
            "secret_generation": _header_generation(s),
            "adopted_patient": patient_of(s),
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

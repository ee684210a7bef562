"""A FHIR server's transaction limits: read from its CapabilityStatement, or learned by probing it with
scratch Basic resources (the probe itself is shared with `planbridge fhir check`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.fhir.errors import FhirError
from service.fhir.refusals import diagnostics

log = logging.getLogger(__name__)

# ---- transaction limits: read from the CapabilityStatement, or learned by probing the server ----

# Where a server may publish its transaction caps (the local server's medplum profile does; real Medplum
# publishes none): a complex extension on CapabilityStatement.rest with integer sub-extensions.
TRANSACTION_LIMITS_URL = "https://planbridge.dev/fhir/StructureDefinition/transaction-limits"
# Medplum's refusals (@medplum/fhir-router BatchProcessor, 400 `invalid`) and its caps, which it does not publish.
STRICT_REFUSAL = "Transaction requires strict isolation but has too many entries"
UPDATES_REFUSAL = "Transaction contains more update operations than allowed"
MEDPLUM_MAX_STRICT_ENTRIES = 8
MEDPLUM_MAX_UPDATES = 50


@dataclass(frozen=True)
class Limits:
    """A server's transaction caps; None means no cap known.

    max_strict_entries: most entries a transaction may have when any entry needs strict isolation (a
    conditional create, update or delete); max_updates: most update (PUT) entries in one transaction.
    """

    max_strict_entries: int | None = None
    max_updates: int | None = None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def server_limits(statement: dict[str, Any]) -> Limits:
    """Return the transaction caps the CapabilityStatement publishes (extension TRANSACTION_LIMITS_URL on
    `rest`), or Limits() when it publishes none."""
    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        for ext in rest.get("extension") or []:
            if not isinstance(ext, dict) or ext.get("url") != TRANSACTION_LIMITS_URL:
                continue
            values = {
                sub.get("url"): _positive_int(sub.get("valueInteger"))
                for sub in ext.get("extension") or []
                if isinstance(sub, dict)
            }
            return Limits(values.get("maxStrictEntries"), values.get("maxUpdates"))
    return Limits()


PROBE_SYSTEM = "https://planbridge.dev/fhir/probe"  # identifier system of the scratch Basic resources


@dataclass
class _Probe:
    """Scratch `Basic` resources for probing a server: one identifier system per run, all deleted at the end."""

    client: Any
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: list[str] = field(default_factory=list)

    @property
    def system(self) -> str:
        return f"{PROBE_SYSTEM}/{self.run}"

    def basic(self, value: str, subject: str | None = None) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Basic",
            "identifier": [{"system": self.system, "value": value}],
            "code": {"text": "planbridge fhir check probe (scratch, deleted afterwards)"},
        }
        if subject:
            resource["subject"] = {"reference": subject}
        return resource

    def create(self, value: str, subject: str | None = None) -> dict[str, Any]:
        response = self.client.request(
            "POST", "Basic", json=self.basic(value, subject), headers={"Prefer": "return=representation"}
        )
        created = response.json() if response.content else {}
        rid = created.get("id") or _location_id(response.headers.get("Location", ""))
        if not rid:
            raise FhirError("the server created a Basic but named no id", status=response.status_code)
        self.created.append(rid)
        if not created.get("meta"):
            created = self.client.read("Basic", rid)
        return created

    def transaction(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        answer = self.client.transaction(bundle, idempotent=False)
        for entry in answer.get("entry") or []:
            rid = _location_id((entry.get("response") or {}).get("location", ""))
            if rid and rid not in self.created:
                self.created.append(rid)
        return answer

    def cleanup(self) -> None:
        """Delete every scratch resource made (one transaction of plain deletes, else one by one)."""
        ids, self.created = self.created, []
        if not ids:
            return
        entries = [{"request": {"method": "DELETE", "url": f"Basic/{rid}"}} for rid in ids]
        try:
            self.client.transaction(
                {"resourceType": "Bundle", "type": "transaction", "entry": entries}, idempotent=True
            )
            return
        except FhirError:
            pass
        for rid in ids:
            try:
                self.client.request("DELETE", f"Basic/{rid}")
            except FhirError as exc:
                log.warning("fhir check: scratch Basic/%s could not be deleted (%s)", rid, exc.code)


def _location_id(location: str) -> str | None:
    """The id in `Basic/12`, `Basic/12/_history/1` or an absolute URL ending so."""
    parts = location.split("/_history")[0].rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Basic" and parts[-1] else None


def _refusal_text(exc: FhirError) -> str:
    return diagnostics(exc.outcome) or exc.detail


def _probe_strict(probe: _Probe, size: int) -> tuple[bool, str]:
    """Send a transaction of `size` conditional creates; return (accepted, what happened)."""
    entries = []
    for i in range(size):
        value = f"strict-{i}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": probe.basic(value),
                "request": {"method": "POST", "url": "Basic", "ifNoneExist": f"identifier={probe.system}|{value}"},
            }
        )
    try:
        probe.transaction(entries)
    except FhirError as exc:
        return False, f"{exc.status}: {_refusal_text(exc)}"
    return True, f"a transaction of {size} conditional creates was accepted"


def _probe_updates(probe: _Probe, size: int) -> tuple[bool, str]:
    """Create `size` scratch resources (plain creates), then update them all in one transaction."""
    creates = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": probe.basic(f"update-{i}"),
            "request": {"method": "POST", "url": "Basic"},
        }
        for i in range(size)
    ]
    answer = probe.transaction(creates)
    ids = [_location_id((e.get("response") or {}).get("location", "")) for e in answer.get("entry") or []]
    ids = [rid for rid in ids if rid]
    if len(ids) != size:
        raise FhirError(f"the server answered a transaction of {size} creates with {len(ids)} locations")
    updates = []
    for i, rid in enumerate(ids):
        resource = probe.basic(f"update-{i}") | {"id": rid}
        resource["code"] = {"text": "planbridge fhir check probe (updated, deleted afterwards)"}
        updates.append({"resource": resource, "request": {"method": "PUT", "url": f"Basic/{rid}"}})
    try:
        probe.transaction(updates)
    except FhirError as exc:
        return False, f"{exc.status}: {_refusal_text(exc)}"
    return True, f"a transaction of {size} updates was accepted"


def _learn_limit(
    probe: _Probe, declared: int | None, medplum_cap: int, refusal: str, send: Any
) -> tuple[int | None, str]:
    """Probe one cap: one more than the declared (or Medplum's) cap. Refused with Medplum's message -> the cap."""
    cap = declared or medplum_cap
    accepted, detail = send(probe, cap + 1)
    if accepted:
        return None, f"{detail}: no cap up to {cap + 1}"
    if refusal.lower() in detail.lower():
        return cap, f"{cap + 1} refused ({detail}): at most {cap}"
    raise FhirError(f"a transaction of {cap + 1} entries was refused for another reason: {detail}")


def probe_limits(client: Any, statement: dict[str, Any] | None = None) -> Limits:
    """Learn the server's transaction caps by sending scratch transactions (Basic resources with a probe
    identifier, deleted afterwards): one conditional create more than the published (or Medplum's) strict
    cap, and one update more than its update cap. A cap that is not hit is None."""
    return _probe_limits(client, statement)[0]


def _probe_limits(client: Any, statement: dict[str, Any] | None) -> tuple[Limits, dict[str, str]]:
    declared = server_limits(statement or {})
    probe = _Probe(client)
    try:
        strict, strict_detail = _learn_limit(
            probe, declared.max_strict_entries, MEDPLUM_MAX_STRICT_ENTRIES, STRICT_REFUSAL, _probe_strict
        )
        updates, updates_detail = _learn_limit(
            probe, declared.max_updates, MEDPLUM_MAX_UPDATES, UPDATES_REFUSAL, _probe_updates
        )
    finally:
        probe.cleanup()
    return Limits(strict, updates), {"strict": strict_detail, "updates": updates_detail}

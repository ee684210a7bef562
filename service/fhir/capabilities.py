"""Check a server's CapabilityStatement for what planbridge relies on, and name what it lacks
(https://hl7.org/fhir/R4/capabilitystatement.html)."""

from __future__ import annotations

import logging
from typing import Any

from service.fhir.errors import FhirError
from service.fhir.limits import (
    MEDPLUM_MAX_STRICT_ENTRIES as MEDPLUM_MAX_STRICT_ENTRIES,
)
from service.fhir.limits import (
    MEDPLUM_MAX_UPDATES as MEDPLUM_MAX_UPDATES,
)
from service.fhir.limits import (
    STRICT_REFUSAL as STRICT_REFUSAL,
)
from service.fhir.limits import (
    TRANSACTION_LIMITS_URL as TRANSACTION_LIMITS_URL,
)
from service.fhir.limits import (
    UPDATES_REFUSAL as UPDATES_REFUSAL,
)
from service.fhir.limits import (
    Limits as Limits,
)
from service.fhir.limits import (
    probe_limits as probe_limits,
)
from service.fhir.limits import (
    server_limits as server_limits,
)
from service.fhir.server_check import FEATURES as FEATURES
from service.fhir.server_check import Feature as Feature
from service.fhir.server_check import ServerCheck as ServerCheck
from service.fhir.server_check import check_server as check_server

log = logging.getLogger(__name__)

# What planbridge does with each resource type: pushes are conditional updates inside a transaction,
# people are conditionally created, pulls search by identifier and _lastUpdated.
NEEDS: dict[str, tuple[set[str], bool, bool]] = {
    # type: (interactions, conditional update, conditional create)
    "CarePlan": ({"read", "search-type", "update"}, True, False),
    "Goal": ({"read", "search-type", "update"}, True, False),
    "CareTeam": ({"read", "search-type", "update"}, True, False),
    "Observation": ({"read", "update"}, True, False),
    "Patient": ({"read", "search-type"}, False, False),
    "Practitioner": ({"read", "create"}, False, True),
    "RelatedPerson": ({"read", "create"}, False, True),
}
SEARCH_PARAMS = {"CarePlan": {"identifier", "patient"}, "Goal": {"identifier"}, "Patient": {"identifier"}}


def missing_capabilities(statement: dict[str, Any], create_patients: bool = False) -> list[str]:
    """Return one sentence per missing capability; an empty list means the server has all we use."""
    missing = []
    if not str(statement.get("fhirVersion", "")).startswith("4.0"):
        missing.append(f"FHIR version is {statement.get('fhirVersion')!r}, planbridge speaks R4 (4.0.x)")
    formats = statement.get("format", [])
    if formats and not any("json" in f for f in formats):
        missing.append("the server does not speak JSON")
    servers = [r for r in statement.get("rest", []) if r.get("mode") == "server"]
    if not servers:
        return [*missing, "the CapabilityStatement has no rest.mode=server section"]
    rest = servers[0]
    if "transaction" not in {i.get("code") for i in rest.get("interaction", [])}:
        missing.append("no transaction interaction: plans cannot be pushed in one all-or-nothing request")
    resources = {r.get("type"): r for r in rest.get("resource", [])}
    needs = dict(NEEDS)
    if create_patients:
        needs["Patient"] = ({"read", "search-type", "create"}, False, True)
    for rtype, (interactions, cond_update, cond_create) in needs.items():
        missing += _resource_gaps(rtype, resources.get(rtype), interactions, cond_update, cond_create)
    return missing


def _resource_gaps(
    rtype: str, resource: dict[str, Any] | None, interactions: set[str], cond_update: bool, cond_create: bool
) -> list[str]:
    if resource is None:
        return [f"{rtype} is not supported"]
    gaps = []
    have = {i.get("code") for i in resource.get("interaction", [])}
    lacking = sorted(interactions - have)
    if lacking:
        gaps.append(f"{rtype} lacks the interaction(s) {', '.join(lacking)}")
    if cond_update and not resource.get("conditionalUpdate"):
        gaps.append(f"{rtype} has no conditional update: repeated pushes could duplicate it")
    if cond_create and not resource.get("conditionalCreate"):
        gaps.append(f"{rtype} has no conditional create (If-None-Exist)")
    params = {p.get("name") for p in resource.get("searchParam", [])}
    lacking_params = sorted(SEARCH_PARAMS.get(rtype, set()) - params) if params else []
    if lacking_params:
        gaps.append(f"{rtype} cannot be searched by {', '.join(lacking_params)}")
    return gaps


def startup_check(client: Any, create_patients: bool, log: Any) -> list[str]:
    """Read the server's CapabilityStatement when a worker starts and log what it lacks; never fatal."""

    try:
        missing = missing_capabilities(client.capabilities(), create_patients=create_patients)
    except FhirError as exc:
        log.warning("could not read the FHIR server's CapabilityStatement (%s); going on", type(exc).__name__)
        return []
    for gap in missing:
        log.warning("the FHIR server lacks what planbridge uses: %s", gap)
    if not missing:
        log.info("the FHIR server has everything planbridge uses")
    return missing

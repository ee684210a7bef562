"""Check a server's CapabilityStatement for what planbridge relies on, and name what it lacks
(https://hl7.org/fhir/R4/capabilitystatement.html)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.fhir.errors import FhirError, FhirVersionConflict
from service.fhir.refusals import diagnostics

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
    from service.fhir.errors import FhirError

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


# ---- `planbridge fhir check`: probe everything sync relies on ----

# name: (required, what planbridge does without it)
FEATURES: dict[str, tuple[bool, str]] = {
    "versioned_update": (
        True,
        "planbridge writes with If-Match to notice an EHR edit made since it last read the resource; a server "
        "that ignores a stale If-Match lets a push overwrite that edit unseen (no conflict is recorded)",
    ),
    "conditional_create": (
        True,
        "people (Patient when PLANBRIDGE_CREATE_PATIENTS, Practitioner, RelatedPerson) are created with "
        "If-None-Exist; without it a repeated push could create them twice",
    ),
    "conditional_update": (
        True,
        "pushes write Goals, CarePlans, CareTeams and check-ins with `PUT Type?identifier=`; without it a push "
        "whose answer was lost could create them again",
    ),
    "transaction": (
        True,
        "a plan is pushed all-or-nothing in transactions; without them it cannot be pushed",
    ),
    "last_updated": (
        True,
        "`sync pull` and the worker ask for what changed since their cursor (`identifier=system|` and "
        "`_lastUpdated=gt`); without it they cannot find changes: pull plans by name (`sync pull --plan`, "
        "`--patient`) or rely on notifications",
    ),
    "include": (
        True,
        "a pull reads each CarePlan with its Goals, CareTeam and Patient in one search (`_include`); without it "
        "the plans would be read without their goals and team",
    ),
    "include_iterate": (
        True,
        "a pull reads the team's Practitioners and RelatedPersons through the CareTeam (`_include:iterate`); "
        "without it the members' people are not read",
    ),
    "search:CarePlan?subject": (True, "`sync pull --patient MRN` finds a patient's CarePlans by subject"),
    "search:CarePlan?identifier": (True, "pulls find planbridge's CarePlans by identifier"),
    "search:Goal?identifier": (True, "pushes and pulls find planbridge's Goals by identifier"),
    "search:CareTeam?identifier": (True, "pushes and pulls find planbridge's CareTeams by identifier"),
    "search:Observation?_id": (True, "a pull reads the Goals' check-in Observations by `_id`"),
    "search:Patient?identifier": (True, "a push finds the plan's Patient by MRN"),
    "instance_history": (
        False,
        "a pulled CarePlan naming a Goal that no longer resolves is matched to the plan's goal through the "
        "Goal's `_history`; without it the goal is only seen as missing, and left to a later pull",
    ),
    "batch": (False, "nothing: sync sends transactions, never batches"),
    "subscriptions_rest_hook": (
        False,
        "`planbridge subscribe` makes R4 rest-hook Subscriptions so the server tells planbridge of changes; "
        "without them planbridge learns of EHR edits only by polling (`sync pull`, the worker)",
    ),
    "subscriptions_backport": (
        False,
        "nothing today: planbridge subscribes with R4 rest-hook criteria, not Backport topics",
    ),
}


@dataclass
class Feature:
    """One thing sync relies on: whether the server has it, what was seen, what planbridge does without it."""

    ok: bool
    detail: str
    without_it: str
    required: bool
    probed: bool = True


@dataclass
class ServerCheck:
    """What `planbridge fhir check` found by probing the server."""

    features: dict[str, Feature]
    limits: Limits
    stale_version_status: int | None

    def missing(self) -> list[str]:
        """One sentence per required feature the probe showed absent (features that could not be probed excluded)."""
        return [
            f"{name}: {feature.detail}"
            for name, feature in self.features.items()
            if feature.required and feature.probed and not feature.ok
        ]


def _feature(name: str, ok: bool, detail: str, probed: bool = True) -> Feature:
    required, without = FEATURES[name]
    return Feature(ok=ok, detail=detail, without_it=without, required=required, probed=probed)


def _failed(exc: FhirError) -> str:
    return f"the probe was refused: {exc.status or 'no answer'} {_refusal_text(exc)}".strip()


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e.get("resource") or {}
        for e in bundle.get("entry") or []
        if (e.get("search") or {}).get("mode", "match") == "match"
    ]


def _included(bundle: dict[str, Any]) -> set[str]:
    return {
        (e.get("resource") or {}).get("id", "")
        for e in bundle.get("entry") or []
        if (e.get("search") or {}).get("mode") == "include"
    }


def _statement_features(statement: dict[str, Any]) -> dict[str, Feature]:
    """Subscriptions, read from the CapabilityStatement (not probed: a Subscription would notify someone)."""
    rest = next((r for r in statement.get("rest") or [] if isinstance(r, dict) and r.get("mode") == "server"), {})
    resources = {r.get("type"): r for r in rest.get("resource") or [] if isinstance(r, dict)}
    subscription = resources.get("Subscription")
    writes = {i.get("code") for i in (subscription or {}).get("interaction") or []} & {"create", "update"}
    rest_hook = bool(subscription) and bool(writes)
    profiles = [str(p) for p in (subscription or {}).get("supportedProfile") or []]
    profiles += [str(p) for p in statement.get("instantiates") or []] + [str(p) for p in statement.get("imports") or []]
    backport = "SubscriptionTopic" in resources or any("subscriptions-backport" in p for p in profiles)
    return {
        "subscriptions_rest_hook": _feature(
            "subscriptions_rest_hook",
            rest_hook,
            "the CapabilityStatement lists Subscription with " + ", ".join(sorted(writes))
            if rest_hook
            else "the CapabilityStatement lists no writable Subscription resource",
            probed=False,
        ),
        "subscriptions_backport": _feature(
            "subscriptions_backport",
            backport,
            "the CapabilityStatement names SubscriptionTopic or the subscriptions-backport IG"
            if backport
            else "no SubscriptionTopic resource and no subscriptions-backport profile in the CapabilityStatement",
            probed=False,
        ),
    }


def _probe_versioned_update(probe: _Probe, first: dict[str, Any]) -> tuple[Feature, int | None]:
    client, rid = probe.client, first["id"]
    version = str((first.get("meta") or {}).get("versionId") or "1")
    body = probe.basic("first") | {"id": rid}
    body["code"] = {"text": "planbridge fhir check probe (updated, deleted afterwards)"}
    try:
        client.request("PUT", f"Basic/{rid}", json=body, headers={"If-Match": f'W/"{version}"'})
    except FhirError as exc:
        return _feature("versioned_update", False, f"an update naming the current version: {_failed(exc)}"), None
    try:
        client.request("PUT", f"Basic/{rid}", json=body, headers={"If-Match": f'W/"{version}"'})
    except FhirVersionConflict as exc:
        return _feature("versioned_update", True, f"a stale If-Match answers {exc.status}"), exc.status
    except FhirError as exc:
        return _feature("versioned_update", False, f"a stale If-Match: {_failed(exc)}"), exc.status
    return _feature("versioned_update", False, "the server accepted an update with a stale If-Match"), None


def _written_id(probe: _Probe, response: Any, expected: str) -> str | None:
    """Return the id a conditional write answered with; one other than `expected` is a new scratch resource."""
    made = _location_id(response.headers.get("Location", "")) or (response.json() if response.content else {}).get("id")
    if made and made != expected:
        probe.created.append(made)
    return made


def _probe_conditional(probe: _Probe, first: dict[str, Any]) -> dict[str, Feature]:
    client, rid = probe.client, first["id"]
    condition = f"{probe.system}|first"
    found: dict[str, Feature] = {}
    try:
        response = client.request(
            "POST", "Basic", json=probe.basic("first"), headers={"If-None-Exist": f"identifier={condition}"}
        )
        made = _written_id(probe, response, rid)
        ok = made in (None, rid) and response.status_code == 200
        detail = (
            "If-None-Exist returned the existing resource"
            if ok
            else f"If-None-Exist answered {response.status_code} and made Basic/{made}"
        )
        found["conditional_create"] = _feature("conditional_create", ok, detail)
    except FhirError as exc:
        found["conditional_create"] = _feature("conditional_create", False, _failed(exc))
    try:
        body = probe.basic("first")
        body["code"] = {"text": "planbridge fhir check probe (conditionally updated, deleted afterwards)"}
        response = client.request("PUT", "Basic", params={"identifier": condition}, json=body)
        made = _written_id(probe, response, rid)
        ok = made in (None, rid) and response.status_code == 200
        detail = (
            "`PUT Basic?identifier=` updated the one match"
            if ok
            else f"`PUT Basic?identifier=` answered {response.status_code} and wrote Basic/{made}"
        )
        found["conditional_update"] = _feature("conditional_update", ok, detail)
    except FhirError as exc:
        found["conditional_update"] = _feature("conditional_update", False, _failed(exc))
    return found


def _probe_searches(probe: _Probe, unchanged: dict[str, Any], chain: list[str]) -> dict[str, Feature]:
    """Search probes; `unchanged` is a scratch resource written once, before the others of `chain`."""
    client = probe.client
    found: dict[str, Feature] = {}
    stamp = (unchanged.get("meta") or {}).get("lastUpdated")
    try:
        params = {"identifier": f"{probe.system}|", "_lastUpdated": "gt1970-01-01T00:00:00Z", "_count": "50"}
        seen = {r.get("id") for r in _matches(client.request("GET", "Basic", params=params).json())}
        later = {
            r.get("id")
            for r in _matches(client.request("GET", "Basic", params={**params, "_lastUpdated": f"gt{stamp}"}).json())
        }
        ok = unchanged["id"] in seen and unchanged["id"] not in later
        detail = (
            "`identifier=system|&_lastUpdated=gt` finds what changed after the instant, and only that"
            if ok
            else "`_lastUpdated=gt` did not select by time (ignored, or `identifier=system|` did not match)"
        )
        found["last_updated"] = _feature(
            "last_updated", ok, detail if stamp else "created resources carry no meta.lastUpdated"
        )
    except FhirError as exc:
        found["last_updated"] = _feature("last_updated", False, _failed(exc))
    head, middle = chain  # tail.subject -> middle, middle.subject -> head
    params = {"identifier": f"{probe.system}|tail"}
    try:
        bundle = client.request("GET", "Basic", params={**params, "_include": "Basic:subject"}).json()
        ok = middle in _included(bundle)
        found["include"] = _feature(
            "include",
            ok,
            "`_include` returns the referenced resource" if ok else "`_include` returned nothing included",
        )
    except FhirError as exc:
        found["include"] = _feature("include", False, _failed(exc))
    try:
        query = [*params.items(), ("_include", "Basic:subject"), ("_include:iterate", "Basic:subject")]
        included = _included(client.request("GET", "Basic", params=query).json())
        ok = {head, middle} <= included
        found["include_iterate"] = _feature(
            "include_iterate",
            ok,
            "`_include:iterate` follows references of included resources"
            if ok
            else "`_include:iterate` did not follow the included resource's reference",
        )
    except FhirError as exc:
        found["include_iterate"] = _feature("include_iterate", False, _failed(exc))
    nothing = f"planbridge-probe-{probe.run}"
    for rtype, param, value in (
        ("CarePlan", "subject", f"Patient/{nothing}"),
        ("CarePlan", "identifier", f"{probe.system}|{nothing}"),
        ("Goal", "identifier", f"{probe.system}|{nothing}"),
        ("CareTeam", "identifier", f"{probe.system}|{nothing}"),
        ("Observation", "_id", nothing),
        ("Patient", "identifier", f"{probe.system}|{nothing}"),
    ):
        name = f"search:{rtype}?{param}"
        try:  # a value nothing matches: a server that ignores the parameter returns other resources
            matches = _matches(client.request("GET", rtype, params={param: value, "_count": "1"}).json())
            ok = not matches
            detail = (
                f"`{rtype}?{param}=` is understood"
                if ok
                else f"`{rtype}?{param}=` was ignored (it matched unrelated resources)"
            )
            found[name] = _feature(name, ok, detail)
        except FhirError as exc:
            found[name] = _feature(name, False, _failed(exc))
    return found


def _probe_history_and_batch(probe: _Probe, first: dict[str, Any]) -> dict[str, Feature]:
    client = probe.client
    found: dict[str, Feature] = {}
    try:
        gone = probe.create("deleted")
        client.request("DELETE", f"Basic/{gone['id']}")
        history = client.request("GET", f"Basic/{gone['id']}/_history").json()
        values = {
            i.get("value")
            for e in history.get("entry") or []
            for i in (e.get("resource") or {}).get("identifier") or []
            if i.get("system") == probe.system
        }
        ok = "deleted" in values
        found["instance_history"] = _feature(
            "instance_history",
            ok,
            "`_history` of a deleted resource keeps its versions"
            if ok
            else "`_history` of a deleted resource shows none of its versions",
        )
    except FhirError as exc:
        found["instance_history"] = _feature("instance_history", False, _failed(exc))
    try:
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Basic/{first['id']}"}}],
        }
        answer = client.request("POST", "", json=bundle).json()
        statuses = [str((e.get("response") or {}).get("status", "")) for e in answer.get("entry") or []]
        ok = answer.get("type") == "batch-response" and len(statuses) == 1 and statuses[0].startswith("200")
        found["batch"] = _feature(
            "batch",
            ok,
            "a batch answers entry by entry" if ok else f"a batch answered {statuses or answer.get('type')}",
        )
    except FhirError as exc:
        found["batch"] = _feature("batch", False, _failed(exc))
    return found


def check_server(client: Any, statement: dict[str, Any], probe: bool = True) -> ServerCheck:
    """Probe the server for everything sync relies on, with scratch `Basic` resources carrying a probe identifier
    (deleted afterwards; no other resource is written). probe=False reads only the CapabilityStatement."""
    features = _statement_features(statement)
    if not probe:
        for name in FEATURES:
            features.setdefault(name, _feature(name, False, "not probed (--no-probe)", probed=False))
        return ServerCheck(features, server_limits(statement), None)
    scratch = _Probe(client)
    stale = None
    limits = Limits()
    try:
        try:
            first = scratch.create("first")
            head = scratch.create("head")
            middle = scratch.create("middle", subject=f"Basic/{head['id']}")
            scratch.create("tail", subject=f"Basic/{middle['id']}")
        except FhirError as exc:
            reason = f"not probed: a scratch Basic could not be created ({_failed(exc)})"
            for name in FEATURES:
                features.setdefault(name, _feature(name, False, reason, probed=False))
            return ServerCheck(features, server_limits(statement), None)
        features["versioned_update"], stale = _probe_versioned_update(scratch, first)
        features |= _probe_conditional(scratch, first)
        features |= _probe_searches(scratch, head, [head["id"], middle["id"]])
        features |= _probe_history_and_batch(scratch, first)
    finally:
        scratch.cleanup()
    try:
        limits, details = _probe_limits(client, statement)
        features["transaction"] = _feature(
            "transaction", True, f"conditional entries: {details['strict']}; updates: {details['updates']}"
        )
    except FhirError as exc:
        limits = server_limits(statement)
        features["transaction"] = _feature("transaction", False, _failed(exc))
    return ServerCheck({name: features[name] for name in FEATURES if name in features}, limits, stale)

"""`planbridge fhir check`: probe a server for everything sync relies on, each with what planbridge does
without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from service.fhir.errors import FhirError, FhirVersionConflict
from service.fhir.limits import Limits, _location_id, _Probe, _probe_limits, _refusal_text, server_limits

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
    "type_history": (
        False,
        "an incremental pull reads what the EHR deleted since its cursor from the type-level history of Goals, "
        "CareTeams, check-in Observations and CarePlans (`<Type>/_history?_since=`, in its `batch`): a deleted "
        "resource is no search's match. Without it the pull cannot see deletions between full pulls: a deleted "
        "Goal, CareTeam, check-in or CarePlan reaches the plan only when something else of it changes, or when "
        "it is pulled by name (`sync pull --plan`); pulls remember the refusal for a day",
    ),
    "batch": (
        False,
        "an incremental pull sends its `_lastUpdated` searches (CarePlan, CareTeam, Goal, Observation, and the "
        "adopted plans' `_id` searches) in one `batch` request; without it each goes as a search of its own "
        "(four requests or more instead of one), and pulls remember the refusal for a day instead of trying "
        "a batch every time",
    ),
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


def _probe_type_history(probe: _Probe, gone: dict[str, Any] | None) -> Feature:
    """`Basic/_history?_since=` from the deleted scratch resource's creation: does it list that resource's
    `DELETE`, as an incremental pull reads deletions (service.sync.pull_search)?"""
    if gone is None:
        return _feature("type_history", False, "not probed: the scratch resource to delete was not made", False)
    since = (gone.get("meta") or {}).get("lastUpdated") or "1970-01-01T00:00:00Z"
    try:
        answer = probe.client.request("GET", "Basic/_history", params={"_since": since, "_count": "50"}).json()
    except FhirError as exc:
        return _feature("type_history", False, f"`Basic/_history`: {_failed(exc)}")
    if not isinstance(answer, dict) or answer.get("type") != "history":
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        return _feature("type_history", False, f"`Basic/_history` answered no history Bundle ({kind})")
    deletes = {
        str((e.get("request") or {}).get("url", "")).split("?")[0].split("/_history")[0]
        for e in answer.get("entry") or []
        if isinstance(e, dict) and str((e.get("request") or {}).get("method", "")).upper() == "DELETE"
    }
    ok = f"Basic/{gone['id']}" in deletes
    return _feature(
        "type_history",
        ok,
        "`Basic/_history?_since=` lists a deleted resource's `DELETE`"
        if ok
        else "`Basic/_history?_since=` did not list the `DELETE` of a resource deleted after that instant",
    )


def _probe_history_and_batch(probe: _Probe, first: dict[str, Any]) -> dict[str, Feature]:
    client = probe.client
    found: dict[str, Feature] = {}
    gone: dict[str, Any] | None = None  # the scratch resource deleted, for the type-level history too
    try:
        made = probe.create("deleted")
        client.request("DELETE", f"Basic/{made['id']}")
        gone = made
        history = client.request("GET", f"Basic/{made['id']}/_history").json()
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
    found["type_history"] = _probe_type_history(probe, gone)
    try:
        search = f"Basic?{urlencode({'identifier': f'{probe.system}|', '_count': '1'})}"
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": f"Basic/{first['id']}"}},
                {"request": {"method": "GET", "url": search}},  # as an incremental pull searches
            ],
        }
        answer = client.request("POST", "", json=bundle).json()
        entries = [e for e in answer.get("entry") or [] if isinstance(e, dict)]
        statuses = [str((e.get("response") or {}).get("status", "")) for e in entries]
        ok = answer.get("type") == "batch-response" and len(statuses) == 2 and all(s.startswith("2") for s in statuses)
        detail = "a batch answers entry by entry" if ok else f"a batch answered {statuses or answer.get('type')}"
        if ok:
            page = entries[1].get("resource") or {}
            if any(link.get("relation") == "next" for link in page.get("link") or []):
                detail += "; a search in it pages with `next` links"
            elif isinstance(page.get("total"), int) and page["total"] > len(_matches(page)):
                detail += (
                    f"; a search in it answered {len(_matches(page))} of {page['total']} with no `next` link "
                    "(a pull searches such a type again on its own)"
                )
        found["batch"] = _feature("batch", ok, detail)
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

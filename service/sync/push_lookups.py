"""What a push asks the server before it sends: the resources a plan names by a conditional reference
(`Patient?identifier=system|value`), each resolved with one search as HAPI and Medplum resolve one on a write."""

from __future__ import annotations

from typing import Any

from mappings.datatypes import retarget
from service.domain.errors import MappingError, NotFound
from service.domain.model import Plan
from service.fhir.client import FhirClient, lookup_outcome
from service.fhir.errors import FhirMultipleMatches
from service.settings import Settings
from service.sync.conditional_refs import ReferenceNotOnServer, conditional_search
from service.sync.push_bundle import PatientNotOnServer, _patient_reference


class PushLookups:
    """The lookups of `service.sync.push.Pusher` (its client and settings)."""

    client: FhirClient
    settings: Settings

    def _find_patient(self, linked_id: str | None, plan: Plan) -> tuple[str | None, int]:
        """Return (`Patient/<id>` or None to create it in the Bundle, requests spent finding it).

        A conditional reference (`Patient?identifier=system|value`, as an imported Bundle may hold) is resolved
        as a server resolves one in a transaction (`_find_one`; none: PatientNotOnServer) and the Bundle names
        the Patient literally (`_named_literally`); found once, it is the plan's `patient` link. Any other plan:
        `push_bundle._patient_reference`. Call it outside any database transaction when it may ask the server."""
        conditional = plan.patient.fhir_reference
        if conditional_search(conditional) is None:
            return _patient_reference(linked_id, self.client, self.settings, plan)
        if linked_id is not None:
            return f"Patient/{linked_id}", 0
        return self._find_one(conditional, plan, "Patient", PatientNotOnServer), 1

    def _find_one(
        self, reference: str, plan: Plan, rtype: str | None, none: type[NotFound] = ReferenceNotOnServer
    ) -> str:
        """Return `Type/<id>` of the one resource a conditional reference's search matches, `rtype` the type it
        must name (None: any); none matches: `none`; several: FhirMultipleMatches."""
        whose = f"plan {plan.id}'s patient" if rtype == "Patient" else f"a reference of plan {plan.id}"
        named, params = conditional_search(reference) or ("", [])
        if (rtype or named) != named or not params or not all(name and value for name, value in params):
            raise MappingError(
                f"the conditional reference of {whose} is not a search for a {rtype or 'resource'}",
                errors={"patient.fhir_reference" if rtype else "reference": f"{rtype or 'Type'}?<parameter>=<value>"},
            )
        # One page of at most two is enough to tell one match from several (the values are PHI: never logged).
        page = self.client.request("GET", named, params=[*params, ("_count", "2")]).json()
        found = [e["resource"] for e in page.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        search = f"the conditional reference of {whose} (a search by {', '.join(sorted({n for n, _ in params}))})"
        if not found:
            raise none(f"no {named} matches {search}", plan_id=plan.id)
        if len(found) > 1:
            several = f"several {named}s match {search}"
            raise FhirMultipleMatches(several, outcome=lookup_outcome(several, "multiple-matches"))
        return f"{named}/{found[0]['id']}"

    @staticmethod
    def _named_literally(
        bundle: dict[str, Any], plan: Plan, patient_ref: str | None, named: dict[str, str]
    ) -> dict[str, Any]:
        """Return the Bundle naming literally what the plan names by a conditional reference: the Patient by
        `patient_ref` (`Patient/<id>`, found by `_find_patient`), the rest as `named` (`Lookup.resolve`) says."""
        conditional = plan.patient.fhir_reference
        if patient_ref is not None and conditional and conditional_search(conditional) is not None:
            named = {**named, conditional: patient_ref}
        return retarget(bundle, named) if named else bundle

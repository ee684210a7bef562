"""The plan's team <-> FHIR R4 CareTeam (https://hl7.org/fhir/R4/careteam.html), and the
Practitioner / RelatedPerson resources a transaction creates for members the server lacks."""

from __future__ import annotations

from mappings import codes
from mappings import datatypes as dt
from mappings.datatypes import Json
from mappings.refs import IMPLIED, Refs, Resolver, member_identifier
from service.domain.model import Member, Plan

CARETEAM_KEYS = {"resourceType", "id", "meta", "identifier", "subject", "participant"}
PARTICIPANT_KEYS = {"id", "role", "member"}
NO_SUBJECT = "_planbridge_no_subject"  # in careteam_extra: the EHR's CareTeam named no subject (kept so)


def writes_careteam(plan: Plan) -> bool:
    """Tell whether the plan has a CareTeam to write: someone is on the team as a participant of it.

    The patient put on an EHR-authored plan's team by planbridge (so the patient may act on it) is
    on the plan's team without being written into the EHR's CareTeam (`IMPLIED`)."""
    return any(m.in_team and not m.fhir_extra.get(IMPLIED) for m in plan.team)


def careteam_to_fhir(plan: Plan, refs: Refs) -> Json:
    """Return the CareTeam: one participant per member, its element id the member id."""
    participants = [
        dt.merge(
            dt.prune(
                {
                    "id": None if m.fhir_extra.get("_planbridge_synthetic_id") else m.id,
                    "role": [dt.concept_to_fhir(m.role)] if m.role else [],
                    "member": refs.member(m.id, f"team[{i}]"),
                }
            ),
            m.fhir_extra,
        )
        for i, m in enumerate(plan.team)
        if m.in_team and not m.fhir_extra.get(IMPLIED)
    ]
    built = dt.prune(
        {
            "resourceType": "CareTeam",
            "identifier": [{"system": codes.identifier_system(refs.identifier_base, "careteam"), "value": plan.id}],
            "subject": None if plan.careteam_extra.get(NO_SUBJECT) else refs.subject(),
            "participant": participants,
        }
    )
    return dt.merge(built, plan.careteam_extra)


def careteam_from_fhir(
    resource: Json, resolver: Resolver, base: str, plan_id: str | None = None
) -> tuple[list[Member], Json]:
    """Return the team members (registered with the resolver) and the CareTeam's unmodelled rest.

    With `plan_id`, only that plan's identifier is planbridge's: a CareTeam two EHR CarePlans share carries
    the identifier of each adopted plan that wrote it, and another plan's is kept as it came."""
    members = []
    extra = dt.residual(resource, CARETEAM_KEYS, set())
    ours = codes.identifier_system(base, "careteam")
    others = [
        i
        for i in resource.get("identifier", [])
        if i.get("system") != ours or (plan_id is not None and i.get("value") != plan_id)
    ]
    if others:
        extra["identifier"] = others
    kept_participants = []
    for participant in resource.get("participant", []):
        if "member" not in participant or not resolver.is_person(participant["member"]):
            kept_participants.append(participant)  # no member, or an Organization / CareTeam: kept as it came
            continue
        if any(m.id == resolver.known(participant["member"]) for m in members):
            kept_participants.append(participant)  # a second participation of the same person: kept as it came
            continue
        member_id = resolver.member_for(participant["member"], in_team=True, member_id=participant.get("id"))
        member = resolver.members[member_id]
        roles = participant.get("role", [])
        member.fhir_extra = dt.residual(participant, PARTICIPANT_KEYS, set())
        if roles and not dt.concept_fits(roles[0]):
            roles = []  # a role the model cannot hold (an extension, an element id): all kept as they came
            member.fhir_extra["role"] = participant["role"]
        member.role = dt.concept_from_fhir(roles[0]) if roles else None
        if "id" not in participant:
            member.fhir_extra["_planbridge_synthetic_id"] = True  # the EHR gave the participant no element id
        if len(roles) > 1:
            member.fhir_extra["role"] = roles[1:]
        members.append(member)
    if kept_participants:
        extra["participant"] = kept_participants
    if "subject" not in resource:
        extra[NO_SUBJECT] = True
    dt.remember_source(extra, resource, len(others) != len(resource.get("identifier", [])))
    return members, extra


def person_resource(plan: Plan, member: Member, refs: Refs) -> Json:
    """Return the Practitioner or RelatedPerson to create (if absent) for a member."""
    system, value = member_identifier(plan.id, member, refs.identifier_base)
    resource = dt.prune(
        {
            "resourceType": codes.MEMBER_RESOURCE[member.kind],
            "identifier": [{"system": system, "value": value}],
            "name": [{"text": member.name}] if member.name else [],
        }
    )
    if member.kind == "related-person":
        resource["patient"] = {"reference": refs.patient}
        if member.role:
            resource["relationship"] = [dt.concept_to_fhir(member.role)]
    return resource

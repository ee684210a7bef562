"""The compiled structure check rejects each kind of bad input by element path, and agrees with fhir.resources."""

import copy

import pytest
from hypothesis import HealthCheck, given, settings

from mappings.bundle import plan_to_bundle
from mappings.fhir import issues_of, structure_errors, validate, validate_bundle, validate_with_models
from service.domain.errors import MappingError
from tests.strategies import plans

GOAL = {
    "resourceType": "Goal",
    "id": "g1",
    "meta": {"versionId": "3", "lastUpdated": "2026-11-22T09:30:00.123+01:00"},
    "extension": [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/goal-acceptance",
            "extension": [
                {"url": "individual", "valueReference": {"reference": "Patient/42"}},
                {"url": "status", "valueCode": "agree"},
            ],
        }
    ],
    "identifier": [{"system": "https://planbridge.example.org/id/goal", "value": "plan-1/walk"}],
    "lifecycleStatus": "active",
    "description": {"coding": [{"system": "http://snomed.info/sct", "code": "289169006"}], "text": "Walk"},
    "subject": {"reference": "Patient/42", "display": "Sam"},
    "startDate": "2026-09",
    "target": [
        {"measure": {"text": "steps"}, "detailQuantity": {"value": 5000.5, "comparator": ">="}, "dueDate": "2027"},
        {"measure": {"text": "walks"}, "detailInteger": 3, "dueDuration": {"value": 6, "unit": "mo"}},
        {"measure": {"text": "calmer"}, "detailBoolean": False},
    ],
    "note": [{"authorString": "Ann", "time": "2026-09-01T10:00:00Z", "text": "Sundays"}],
}
CAREPLAN = {
    "resourceType": "CarePlan",
    "status": "active",
    "intent": "plan",
    "subject": {"reference": "Patient/42"},
    "period": {"start": "2026-01-01", "end": "2026-12-31T23:59:59-05:00"},
    "activity": [
        {
            "detail": {
                "status": "in-progress",
                "performer": [{"reference": "Practitioner/7"}],
                "scheduledString": "daily",
            }
        }
    ],
}


OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "steps"},
    "subject": {"reference": "Patient/42"},
    "valueQuantity": {"value": 4200, "comparator": ">", "unit": "steps"},
    "component": [{"code": {"text": "pace"}, "valueQuantity": {"value": 5, "comparator": "<"}}],
    "referenceRange": [{"low": {"value": 1000}, "high": {"value": 9000}}],
}
CARETEAM = {
    "resourceType": "CareTeam",
    "status": "active",
    "identifier": [{"use": "official", "system": "urn:x", "value": "t1"}],
    "participant": [{"member": {"reference": "Practitioner/7"}}],
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">team</div>'},
}
PATIENT = {
    "resourceType": "Patient",
    "gender": "female",
    "contact": [{"gender": "male", "name": {"text": "Ann"}}],
    "link": [{"other": {"reference": "Patient/43"}, "type": "seealso"}],
}


def changed(resource: dict, path: tuple, value: object) -> dict:
    """Return a copy of `resource` with the element at `path` set to `value` (or removed, for ...)."""
    out = copy.deepcopy(resource)
    node = out
    for step in path[:-1]:
        node = node[step]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


BAD = [
    # unknown elements, at the root and deep inside
    (GOAL, ("banana",), 1, "Goal.banana"),
    (GOAL, ("target", 0, "detailText"), "x", "Goal.target[0].detailText"),
    (GOAL, ("description", "resourceType"), "CodeableConcept", "Goal.description.resourceType"),
    (GOAL, ("lifecycleStatus__ext",), {"extension": []}, "Goal.lifecycleStatus__ext"),
    # wrong JSON types
    (GOAL, ("target", 2, "detailBoolean"), "true", "Goal.target[2].detailBoolean"),
    (GOAL, ("target", 1, "detailInteger"), "3", "Goal.target[1].detailInteger"),
    (GOAL, ("target", 1, "detailInteger"), 3.0, "Goal.target[1].detailInteger"),
    (GOAL, ("target", 0, "detailQuantity", "value"), "5000.5", "Goal.target[0].detailQuantity.value"),
    (GOAL, ("target", 0, "detailQuantity", "value"), float("nan"), "Goal.target[0].detailQuantity.value"),
    (GOAL, ("subject", "reference"), 42, "Goal.subject.reference"),
    (GOAL, ("category",), {"text": "x"}, "Goal.category"),
    (GOAL, ("priority",), [{"text": "x"}], "Goal.priority"),
    (GOAL, ("note",), [None], "Goal.note[0]"),
    (GOAL, ("statusReason",), None, "Goal.statusReason"),
    (GOAL, ("target", 1, "detailInteger"), 2**31, "Goal.target[1].detailInteger"),
    # missing required elements
    (GOAL, ("lifecycleStatus",), ..., "Goal.lifecycleStatus"),
    (GOAL, ("description",), ..., "Goal.description"),
    (GOAL, ("subject",), ..., "Goal.subject"),
    (GOAL, ("note", 0, "text"), ..., "Goal.note[0].text"),
    (GOAL, ("extension", 0, "url"), ..., "Goal.extension[0].url"),
    (CAREPLAN, ("status",), ..., "CarePlan.status"),
    (CAREPLAN, ("intent",), ..., "CarePlan.intent"),
    (CAREPLAN, ("subject",), ..., "CarePlan.subject"),
    (CAREPLAN, ("activity", 0, "detail", "status"), ..., "CarePlan.activity[0].detail.status"),
    # bad date, dateTime and instant formats
    (GOAL, ("startDate",), "2026-02-30", "Goal.startDate"),
    (GOAL, ("startDate",), "2026-13", "Goal.startDate"),
    (GOAL, ("startDate",), "01/02/2026", "Goal.startDate"),
    (GOAL, ("startDate",), "2026-01-01T10:00:00Z", "Goal.startDate"),
    (GOAL, ("note", 0, "time"), "2026-09-01T10:00:00", "Goal.note[0].time"),
    (GOAL, ("note", 0, "time"), "2026-09-01T10:00Z", "Goal.note[0].time"),
    (GOAL, ("meta", "lastUpdated"), "2026-11-22", "Goal.meta.lastUpdated"),
    (CAREPLAN, ("period", "end"), "2026-12-31 23:59:59", "CarePlan.period.end"),
    # bad code and id formats, empty strings
    (GOAL, ("lifecycleStatus",), " active", "Goal.lifecycleStatus"),
    (GOAL, ("lifecycleStatus",), "on  hold", "Goal.lifecycleStatus"),
    (GOAL, ("lifecycleStatus",), "", "Goal.lifecycleStatus"),
    (GOAL, ("extension", 0, "extension", 1, "valueCode"), "agree\n", "Goal.extension[0].extension[1].valueCode"),
    (CAREPLAN, ("status",), "active ", "CarePlan.status"),
    (GOAL, ("id",), "g_1", "Goal.id"),
    (GOAL, ("id",), "g" * 65, "Goal.id"),
    (GOAL, ("identifier", 0, "system"), "http://a b", "Goal.identifier[0].system"),
    (GOAL, ("note", 0, "text"), "", "Goal.note[0].text"),
    # a choice of types holds one type
    (GOAL, ("target", 1, "dueDate"), "2027", "Goal.target[1].dueDate"),
    # objects and arrays are never empty (https://hl7.org/fhir/R4/json.html), nor an element only an id (ele-1)
    (GOAL, ("target", 0, "measure"), {}, "Goal.target[0].measure"),
    (GOAL, ("target", 0, "detailQuantity"), {}, "Goal.target[0].detailQuantity"),
    (GOAL, ("category",), [{}], "Goal.category[0]"),
    (GOAL, ("extension", 0, "extension", 0, "valueReference"), {}, "Goal.extension[0].extension[0].valueReference"),
    (GOAL, ("category",), [], "Goal.category"),
    (GOAL, ("target", 0, "measure", "coding"), [], "Goal.target[0].measure.coding"),
    (GOAL, ("note",), [], "Goal.note"),
    (GOAL, ("priority",), {"id": "p1"}, "Goal.priority"),
    (CAREPLAN, ("activity", 0, "detail", "performer"), [], "CarePlan.activity[0].detail.performer"),
    (CAREPLAN, ("period",), {}, "CarePlan.period"),
    # ext-1: an extension has a value[x] or sub-extensions, not both, not neither
    (GOAL, ("extension", 0, "valueString"), "x", "Goal.extension[0]"),
    (GOAL, ("extension", 0, "extension", 0, "valueReference"), ..., "Goal.extension[0].extension[0]"),
    (
        GOAL,
        ("extension", 0, "extension", 1, "extension"),
        [{"url": "x", "valueCode": "y"}],
        "Goal.extension[0].extension[1]",
    ),
    (GOAL, ("extension", 0, "extension"), ..., "Goal.extension[0]"),
    (GOAL, ("modifierExtension",), [{"url": "http://ehr.example/x"}], "Goal.modifierExtension[0]"),
    # strings have non-whitespace content (and at most 1,048,576 characters)
    (GOAL, ("note", 0, "text"), "   ", "Goal.note[0].text"),
    (GOAL, ("note", 0, "text"), "\n\t", "Goal.note[0].text"),
    (GOAL, ("note", 0, "authorString"), " ", "Goal.note[0].authorString"),
    (GOAL, ("description", "text"), "", "Goal.description.text"),
    (GOAL, ("description", "text"), "  ", "Goal.description.text"),
    (GOAL, ("subject", "display"), "\r\n", "Goal.subject.display"),
    (GOAL, ("target", 0, "detailQuantity", "unit"), " ", "Goal.target[0].detailQuantity.unit"),
    (CAREPLAN, ("activity", 0, "detail", "scheduledString"), "\t", "CarePlan.activity[0].detail.scheduledString"),
    (GOAL, ("note", 0, "text"), "x" * (1024 * 1024 + 1), "Goal.note[0].text"),
]


@pytest.mark.parametrize(("resource", "path", "value", "named"), BAD)
def test_each_kind_of_bad_input_is_rejected_naming_the_element(resource, path, value, named):
    bad = changed(resource, path, value)
    with pytest.raises(MappingError) as err:
        validate(bad)
    assert named in err.value.data["errors"], err.value.data["errors"]
    assert named in {i.path for i in issues_of(bad)}


def test_strings_with_content_are_kept_as_they_are():
    for text in (" leading and trailing ", "x", "line\nbreak", "x" * 1024 * 1024):
        validate(changed(GOAL, ("note", 0, "text"), text))


def test_the_samples_are_valid_to_begin_with():
    for resource in (GOAL, CAREPLAN, OBSERVATION, CARETEAM, PATIENT):
        validate(resource)
        validate_with_models(resource)
        assert issues_of(resource) == []


@pytest.mark.parametrize(
    ("resource", "path", "value", "named"),
    [
        (GOAL, ("lifecycleStatus",), "banana", "Goal.lifecycleStatus"),
        (GOAL, ("target", 0, "measure"), ..., "Goal.target[0]"),
        (GOAL, ("extension", 0, "extension", 1, "valueCode"), "maybe", "Goal.extension[0].status"),
        (CAREPLAN, ("intent",), "wish", "CarePlan.intent"),
        (CAREPLAN, ("activity", 0, "reference"), {"reference": "Task/1"}, "CarePlan.activity[0]"),
        (CAREPLAN, ("activity", 0, "detail", "status"), "doing", "CarePlan.activity[0].detail.status"),
        (CAREPLAN, ("activity", 0, "detail", "kind"), "Banana", "CarePlan.activity[0].detail.kind"),
    ],
)
def test_bindings_and_invariants_are_still_checked(resource, path, value, named):
    bad = changed(resource, path, value)
    validate(bad)  # structurally fine
    assert named in {i.path for i in issues_of(bad) if i.severity == "error"}


RANGE = {"low": {"value": 1}, "high": {"value": 3}}
RATIO = {"numerator": {"value": 1}, "denominator": {"value": 7}}
NEW_BINDINGS = [
    # Quantity.comparator: < | <= | >= | > (also in a Duration and a Ratio)
    (GOAL, ("target", 0, "detailQuantity", "comparator"), "~", "Goal.target[0].detailQuantity.comparator"),
    (GOAL, ("target", 0, "detailQuantity", "comparator"), "=", "Goal.target[0].detailQuantity.comparator"),
    (GOAL, ("target", 1, "dueDuration", "comparator"), "ad", "Goal.target[1].dueDuration.comparator"),
    (
        changed(GOAL, ("target", 0), {"measure": {"text": "m"}, "detailRatio": RATIO}),
        ("target", 0, "detailRatio", "numerator", "comparator"),
        "gt",
        "Goal.target[0].detailRatio.numerator.comparator",
    ),
    (
        changed(GOAL, ("target", 0), {"measure": {"text": "m"}, "detailRatio": RATIO}),
        ("target", 0, "detailRatio", "denominator", "comparator"),
        "=<",
        "Goal.target[0].detailRatio.denominator.comparator",
    ),
    (OBSERVATION, ("valueQuantity", "comparator"), "~", "Observation.valueQuantity.comparator"),
    (
        OBSERVATION,
        ("component", 0, "valueQuantity", "comparator"),
        "<<",
        "Observation.component[0].valueQuantity.comparator",
    ),
    # sqty-1: Range.low / high are SimpleQuantity, which has no comparator at all
    (
        changed(GOAL, ("target", 0), {"measure": {"text": "m"}, "detailRange": RANGE}),
        ("target", 0, "detailRange", "low", "comparator"),
        ">=",
        "Goal.target[0].detailRange.low.comparator",
    ),
    (
        changed(GOAL, ("target", 0), {"measure": {"text": "m"}, "detailRange": RANGE}),
        ("target", 0, "detailRange", "high", "comparator"),
        "~",
        "Goal.target[0].detailRange.high.comparator",
    ),
    (OBSERVATION, ("referenceRange", 0, "low", "comparator"), "<", "Observation.referenceRange[0].low.comparator"),
    (
        CAREPLAN,
        ("activity", 0, "detail", "quantity"),
        {"value": 2, "comparator": "<"},
        "CarePlan.activity[0].detail.quantity.comparator",
    ),
    # the status codes of the other resources planbridge maps
    (OBSERVATION, ("status",), "done", "Observation.status"),
    (CARETEAM, ("status",), "open", "CareTeam.status"),
    (GOAL, ("extension", 0, "extension", 1, "valueCode"), "agreed", "Goal.extension[0].status"),
    # people, identifiers and narratives
    (PATIENT, ("gender",), "f", "Patient.gender"),
    (PATIENT, ("contact", 0, "gender"), "M", "Patient.contact[0].gender"),
    (PATIENT, ("link", 0, "type"), "same-as", "Patient.link[0].type"),
    ({"resourceType": "Practitioner", "gender": "unknown"}, ("gender",), "n/a", "Practitioner.gender"),
    (
        {"resourceType": "RelatedPerson", "patient": {"reference": "Patient/42"}},
        ("gender",),
        "woman",
        "RelatedPerson.gender",
    ),
    (CARETEAM, ("identifier", 0, "use"), "main", "CareTeam.identifier[0].use"),
    (GOAL, ("identifier", 0, "use"), "primary", "Goal.identifier[0].use"),
    (CARETEAM, ("text", "status"), "auto", "CareTeam.text.status"),
]


@pytest.mark.parametrize(("resource", "path", "value", "named"), NEW_BINDINGS)
def test_required_bindings_name_the_element(resource, path, value, named):
    validate(resource)
    assert issues_of(resource) == []
    bad = changed(resource, path, value)
    validate(bad)  # structurally fine: the code is the problem
    assert named in {i.path for i in issues_of(bad) if i.severity == "error"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bad}]}
    with pytest.raises(MappingError) as err:
        validate_bundle(bundle)
    assert f"Bundle.entry[0].resource{named[len(bad['resourceType']) :]}" in err.value.data["errors"]


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("type",), "bag", "Bundle.type"),
        (("entry", 0, "request", "method"), "post", "Bundle.entry[0].request.method"),
        (("entry", 0, "search"), {"mode": "hit"}, "Bundle.entry[0].search.mode"),
    ],
)
def test_bundle_bindings_name_the_element(path, value, named):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": CAREPLAN, "request": {"method": "POST", "url": "CarePlan"}}],
    }
    validate_bundle(bundle)
    bad = changed(bundle, path, value)
    validate(bad)
    with pytest.raises(MappingError) as err:
        validate_bundle(bad)
    assert named in err.value.data["errors"]
    assert named in {i.path for i in issues_of(bad)}


def test_an_empty_bundle_entry_list_is_refused():
    with pytest.raises(MappingError) as err:
        validate_bundle({"resourceType": "Bundle", "type": "collection", "entry": []})
    assert "Bundle.entry" in err.value.data["errors"]


def test_unknown_and_missing_resource_types_are_refused():
    with pytest.raises(MappingError, match="unknown resource type"):
        validate({"resourceType": "Banana"})
    with pytest.raises(MappingError, match="no resourceType"):
        validate({"id": "1"})
    assert "Goal.contained[0].resourceType" in structure_errors({**GOAL, "contained": [{"resourceType": "Nope"}]})


def test_a_bundle_names_the_entry_and_element():
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": CAREPLAN, "request": {"method": "POST", "url": "CarePlan"}},
            {"resource": changed(GOAL, ("target", 1, "detailInteger"), "3"), "request": {"method": "POST"}},
            {"resource": changed(GOAL, ("lifecycleStatus",), "banana")},
        ],
    }
    with pytest.raises(MappingError) as err:
        validate_bundle(bundle)
    assert set(err.value.data["errors"]) == {
        "Bundle.entry[1].resource.target[1].detailInteger",
        "Bundle.entry[1].request.url",
    }
    bundle["entry"] = [bundle["entry"][0], bundle["entry"][2]]
    with pytest.raises(MappingError) as err:
        validate_bundle(bundle)
    # a transaction's entry needs its request (bdl-3), as a FHIR server says
    assert set(err.value.data["errors"]) == {"Bundle.entry[1].resource.lifecycleStatus", "Bundle.entry[1].request"}


def _verdict(check, resource) -> bool:
    try:
        check(resource)
    except MappingError:
        return False
    return True


EHR_SAMPLES = [
    GOAL,
    CAREPLAN,
    {"resourceType": "Patient", "id": "42", "active": True, "birthDate": "1970-02",
     "name": [{"family": "Jones", "given": ["Sam", None], "_given": [None, {"extension": [
         {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}]}],
     "deceasedBoolean": False, "multipleBirthInteger": 2,
     "contact": [{"relationship": [{"text": "daughter"}], "name": {"text": "Ann"}}]},
    {"resourceType": "Practitioner", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1"}],
     "qualification": [{"code": {"text": "RN"}, "period": {"start": "2001"}}]},
    {"resourceType": "RelatedPerson", "patient": {"reference": "Patient/42"}, "relationship": [{"text": "daughter"}]},
    {"resourceType": "Observation", "status": "final", "code": {"text": "steps"},
     "effectivePeriod": {"start": "2026-01-01T00:00:00Z"}, "valueRatio": {"numerator": {"value": 1}},
     "component": [{"code": {"text": "c"}, "valueSampledData": {"origin": {"value": 0}, "period": 1.5,
                                                                "dimensions": 1, "data": "1 2 3"}}]},
    {"resourceType": "CareTeam", "participant": [{"member": {"reference": "Practitioner/7"},
                                                  "onBehalfOf": {"reference": "Organization/1"}}],
     "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">team</div>"}},
    {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
     "subject": {"reference": "Patient/1"}, "startCodeableConcept": {"text": "soon"},
     "outcomeCode": [{"text": "ok"}], "fhir_comments": ["from an EHR"]},
]  # fmt: skip
# Invalid for both validators: each mistake is one fhir.resources also catches.
BOTH_REJECT = [
    changed(GOAL, ("banana",), 1),
    changed(GOAL, ("subject",), ...),
    changed(GOAL, ("lifecycleStatus",), ...),
    changed(GOAL, ("startDate",), "2026-02-30"),
    changed(GOAL, ("note", 0, "time"), "2026-09-01T10:00:00"),
    changed(GOAL, ("lifecycleStatus",), "on  hold"),
    changed(GOAL, ("id",), "g_1"),
    changed(GOAL, ("target", 1, "dueDate"), "2027"),
    changed(GOAL, ("target", 0, "detailQuantity", "value"), True),
    changed(GOAL, ("statusReason",), 5),
    changed(GOAL, ("priority",), [{"text": "x"}]),
    changed(CAREPLAN, ("intent",), ...),
    changed(CAREPLAN, ("activity", 0, "detail", "bogus"), 1),
]
# Invalid FHIR JSON (https://hl7.org/fhir/R4/json.html) that fhir.resources lets through: the fast path is stricter.
ONLY_FAST_REJECTS = [
    changed(GOAL, ("target", 2, "detailBoolean"), "true"),  # booleans are JSON true/false
    changed(GOAL, ("target", 1, "detailInteger"), "3"),  # integers are JSON numbers
    changed(GOAL, ("target", 0, "detailQuantity", "value"), "5000.5"),  # decimals are JSON numbers
    changed(GOAL, ("statusReason",), None),  # no nulls outside primitive arrays
    changed(GOAL, ("id",), "g" * 65),  # ids are at most 64 characters
    changed(GOAL, ("identifier", 0, "system"), "http://a b"),  # uris hold no whitespace
    changed(GOAL, ("description", "resourceType"), "CodeableConcept"),  # not an element of CodeableConcept
    changed(GOAL, ("target", 0, "measure"), {}),  # objects are never empty
    changed(GOAL, ("category",), []),  # nor arrays
    changed(GOAL, ("priority",), {"id": "p1"}),  # ele-1: an element has more than an id
    changed(GOAL, ("extension", 0, "valueString"), "x"),  # ext-1: not both a value and sub-extensions
    changed(GOAL, ("extension", 0, "extension", 0, "valueReference"), ...),  # ext-1: not neither
    changed(GOAL, ("note", 0, "text"), "  "),  # strings have non-whitespace content
]


def test_the_fast_path_agrees_with_fhir_resources_on_samples():
    for sample in EHR_SAMPLES:
        assert _verdict(validate, sample) and _verdict(validate_with_models, sample), sample
    for sample in BOTH_REJECT:
        assert not _verdict(validate, sample) and not _verdict(validate_with_models, sample), sample
    for sample in ONLY_FAST_REJECTS:
        assert not _verdict(validate, sample) and _verdict(validate_with_models, sample), sample


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_the_fast_path_agrees_with_fhir_resources_on_generated_bundles(plan):
    bundle = plan_to_bundle(plan, "https://planbridge.example.org/id", "http://hospital.example.org/mrn")
    validate(bundle)
    validate_with_models(bundle)
    for entry in bundle["entry"]:
        validate_with_models(entry["resource"])


def test_ctm1_resolves_the_member_through_the_bundle():
    team = {
        "resourceType": "CareTeam",
        "participant": [{"member": {"reference": "urn:uuid:1"}, "onBehalfOf": {"reference": "Organization/1"}}],
    }
    practitioner = {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Practitioner"}}
    validate_bundle({"resourceType": "Bundle", "type": "collection", "entry": [practitioner, {"resource": team}]})
    related = {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "RelatedPerson", "patient": {"reference": "P/1"}}}
    with pytest.raises(MappingError) as err:
        validate_bundle({"resourceType": "Bundle", "type": "collection", "entry": [related, {"resource": team}]})
    assert list(err.value.data["errors"]) == ["Bundle.entry[1].resource.participant[0].onBehalfOf"]
    for reference in ("Patient/1", "http://ehr.example/fhir/RelatedPerson/2/_history/3"):
        alone = changed(team, ("participant", 0, "member"), {"reference": reference})
        assert [i.path for i in issues_of(alone)] == ["CareTeam.participant[0].onBehalfOf"]
    assert issues_of(changed(team, ("participant", 0, "member"), {"reference": "Practitioner/7/_history/1"})) == []

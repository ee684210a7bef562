"""Which FHIR resource holds a conflict's path on the EHR side, and what of a version's meta names who
changed it: a URI or a reference, never a name or free text."""

import pytest

from service.sync.pull import carrier_key, changed_by, origin_of


@pytest.mark.parametrize(
    ("path", "theirs", "key"),
    [
        ("what_matters", "x", "careplan"),
        ("steps[id=s1].status", "done", "careplan"),
        ("steps[id=s1]", None, "careplan"),  # the CarePlan stopped naming the activity
        ("goals[id=g1].lifecycle_status", "on-hold", "goal:g1"),
        ("goals[id=g1].agreements[member_id=m1].status", "agreed", "goal:g1"),
        ("goals[id=g1]", {"id": "g1"}, "goal:g1"),  # marked entered-in-error on the Goal itself
        ("goals[id=g1]", None, "careplan"),  # taken out of the CarePlan (a deleted Goal is told apart by its history)
        ("goals[id=g1].check_ins[id=c1].note", "x", "observation:g1/c1"),
        ("goals[id=g1].ratings[id=r1].score", 3, "observation:g1/r1"),
        ("team[id=m1].role", "x", "careteam"),
        ("team[id=m1]", None, "careteam"),
        ("patient.display_name", "x", "patient"),
    ],
)
def test_a_path_is_carried_by_the_resource_that_holds_it(path, theirs, key):
    assert carrier_key(path, theirs) == key


@pytest.mark.parametrize(
    ("meta", "who"),
    [
        ({"source": "https://ehr.example.org/app#ward-7"}, "https://ehr.example.org/app#ward-7"),
        ({"source": "urn:uuid:7f0c2a9e-1b1e-4f7e-9a55-0d1d7a1f3b2c"}, "urn:uuid:7f0c2a9e-1b1e-4f7e-9a55-0d1d7a1f3b2c"),
        ({"author": {"reference": "Practitioner/12", "display": "Dr Ames"}}, "Practitioner/12"),  # Medplum's
        ({"source": "Dr Jane Ames"}, None),  # free text with a name: not a URI, not kept
        ({"source": "Dr Ames", "author": {"reference": "Practitioner/12"}}, "Practitioner/12"),
        ({"author": {"display": "Dr Ames"}}, None),
        ({"source": 7}, None),
        ({}, None),
        (None, None),
    ],
)
def test_who_changed_a_version_is_a_uri_or_a_reference_only(meta, who):
    assert changed_by(meta) == who


def test_an_origin_reads_the_version_its_time_and_its_source():
    goal = {
        "resourceType": "Goal",
        "id": "77",
        "meta": {"versionId": "4", "lastUpdated": "2026-11-22T09:30:00.123Z", "source": "urn:ehr:ward-7"},
    }
    origin = origin_of(goal)
    assert (origin.resource_type, origin.resource_id, origin.version, origin.changed_by) == (
        "Goal",
        "77",
        "4",
        "urn:ehr:ward-7",
    )
    assert origin.changed_at is not None and origin.changed_at.isoformat() == "2026-11-22T09:30:00.123000+00:00"
    assert origin_of({"resourceType": "Goal", "id": "77", "meta": {"lastUpdated": "yesterday"}}).changed_at is None

"""The event schemas refuse, naming the field, what FHIR cannot carry (issue #14's poison), and keep what it can."""

import copy
import json

import pytest
from marshmallow import ValidationError

from service.api.schemas import EVENT_DATA_SCHEMAS
from tests.support import FIXTURES


def example(name: str) -> dict:
    return copy.deepcopy(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))


def errors_of(event: dict) -> dict:
    try:
        EVENT_DATA_SCHEMAS[event["type"]]().load(event["data"])
    except ValidationError as exc:
        return exc.normalized_messages()
    return {}


def _set(event: dict, path: tuple, value) -> dict:
    target = event["data"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return event


POISON = [
    ("goal-proposed", ("goal", "description"), "walk\x01"),
    ("goal-proposed", ("goal", "description"), "walk\x00"),
    ("note-added", ("text",), "tip\x1b[31m"),
    ("goal-proposed", ("goal", "description"), " "),
    ("goal-proposed", ("goal", "description"), "\t\r\n"),
    ("goal-proposed", ("goal", "description"), "\ufeff"),
    ("goal-proposed", ("goal", "description"), "walk \ud800"),
    ("goal-proposed", ("goal", "targets", 0, "measure", "system"), "not a uri"),
    ("goal-proposed", ("goal", "targets", 0, "measure", "code"), "41950-7\n"),
    ("goal-proposed", ("goal", "targets", 0, "unit"), "steps  per day"),
    ("goal-proposed", ("plan_id",), "plan-nl\n"),
    ("goal-proposed", ("goal", "id"), "goal-walk\n"),
    ("goal-proposed", ("patient", "mrn"), "MRN\x01"),
    ("member-joined", ("identifier", "system"), "urn:x y"),
    ("checkin-recorded", ("at",), "2027-01-10T08:00:00+15:00"),
    ("checkin-recorded", ("at",), "2027-01-10T08:00:00+05:30:15"),
    ("step-added", ("title",), "a" * 201),
]


@pytest.mark.parametrize(("name", "path", "value"), POISON)
def test_poison_is_refused_with_the_path_of_the_field(name, path, value):
    found = errors_of(_set(example(name), path, value))
    for key in path:  # list positions are ints here, strings once the answer is JSON
        assert key in found, (path, found)
        found = found[key]
    assert isinstance(found, list) and found


FINE = [
    ("goal-proposed", ("goal", "description"), "tab\there, CR\r\nLF"),
    ("goal-proposed", ("goal", "description"), "🚶 Sonntag ✓ \u202eevil \u200b"),
    ("goal-proposed", ("goal", "targets", 0, "measure", "code"), "a b"),
    ("goal-proposed", ("goal", "targets", 0, "measure", "system"), "urn:oid:2.16.840.1.113883.6.1"),
    ("checkin-recorded", ("at",), "2027-01-10T08:00:00+14:00"),
    ("checkin-recorded", ("at",), "2027-01-10T08:00:00-12:30"),
]


@pytest.mark.parametrize(("name", "path", "value"), FINE)
def test_what_fhir_carries_is_kept(name, path, value):
    assert errors_of(_set(example(name), path, value)) == {}


def test_a_review_interval_is_a_json_number_never_digits_in_a_string():
    """ASCII digits only, everywhere: "١٢" (Arabic-Indic) or "12" as a string is not a number of weeks."""
    from marshmallow import ValidationError

    from service.api.schemas.plan import DurationSchema

    assert DurationSchema().load({"value": 12, "unit": "wk"}).value == 12
    for value in ("١٢", "12", 12.5):
        with pytest.raises(ValidationError):
            DurationSchema().load({"value": value, "unit": "wk"})

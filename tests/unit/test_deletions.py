"""Deletes in the EHR as changes (service.sync.merge.record_removals, service.sync.deletions): pure functions."""

from __future__ import annotations

import copy

import responses

from service.fhir.client import FhirClient
from service.sync.deletions import accept_removal, deleted_goals, on_server
from service.sync.merge import record_removals, three_way_merge

AT = "2026-11-22T10:00:00+00:00"


def _plan() -> dict:
    return {
        "id": "p",
        "team": [
            {"id": "patient", "kind": "patient", "in_team": True},
            {"id": "nurse", "kind": "practitioner", "in_team": True},
        ],
        "goals": [
            {
                "id": "g1",
                "description": {"text": "Walk"},
                "lifecycle_status": "active",
                "agreements": [{"member_id": "patient"}],
            },
            {"id": "g2", "description": {"text": "Sleep"}, "lifecycle_status": "active"},
        ],
        "steps": [{"id": "s1", "title": "Walk on Saturday", "goal_ids": ["g1"]}, {"id": "s2", "title": "Bed by 11"}],
    }


def _merge(base: dict, ours: dict, theirs: dict, deleted: dict | None = None) -> tuple[dict, list, list]:
    merged, found = three_way_merge(base, ours, theirs)
    added, removed = record_removals(deleted or {}, base, ours, theirs, merged, found, AT)
    return merged, found + added, removed


def test_a_deleted_goal_the_team_did_not_change_is_kept_marked_and_its_steps_keep_naming_it():
    base = _plan()
    theirs = copy.deepcopy(base)
    theirs["goals"] = theirs["goals"][1:]
    theirs["steps"][0].pop("goal_ids")
    merged, conflicts, removed = _merge(base, copy.deepcopy(base), theirs, {"g1": "3"})
    assert conflicts == []
    assert removed == [{"kind": "goal", "id": "g1", "how": "deleted"}]
    (g1,) = [g for g in merged["goals"] if g["id"] == "g1"]
    assert g1["lifecycle_status"] == "entered-in-error" and g1["agreements"] == [{"member_id": "patient"}]
    assert g1["removed_in_ehr"] == {"at": AT, "how": "deleted", "version": "3"}
    assert merged["steps"][0]["goal_ids"] == ["g1"]
    assert theirs["steps"][0].get("goal_ids") is None  # the server's document is not changed through the merge
    sent = on_server(merged)
    assert [g["id"] for g in sent["goals"]] == ["g2"] and "goal_ids" not in sent["steps"][0]


def test_a_deleted_goal_the_team_changed_is_a_conflict_on_the_whole_goal():
    base = _plan()
    ours = copy.deepcopy(base)
    ours["goals"][0]["lifecycle_status"] = "on-hold"
    theirs = copy.deepcopy(base)
    theirs["goals"] = theirs["goals"][1:]
    merged, conflicts, removed = _merge(base, ours, theirs, {"g1": "3"})
    assert [(c.path, c.theirs) for c in conflicts] == [("goals[id=g1]", None)]
    assert removed == [] and merged["goals"][0] == ours["goals"][0]


def test_a_removed_step_and_member_are_kept_marked_and_not_sent():
    base = _plan()
    theirs = copy.deepcopy(base)
    theirs["steps"] = theirs["steps"][:1]
    theirs["team"] = theirs["team"][:1]
    merged, conflicts, removed = _merge(base, copy.deepcopy(base), theirs)
    assert conflicts == []
    assert removed == [
        {"kind": "step", "id": "s2", "how": "removed"},
        {"kind": "member", "id": "nurse", "how": "removed"},
    ]
    nurse = merged["team"][1]
    assert nurse["in_team"] is False and nurse["removed_in_ehr"]["how"] == "removed"
    sent = on_server(merged)
    assert [s["id"] for s in sent["steps"]] == ["s1"] and [m["id"] for m in sent["team"]] == ["patient"]


def test_a_goal_marked_entered_in_error_merges_or_conflicts_when_the_team_changed_it():
    base = _plan()
    theirs = copy.deepcopy(base)
    theirs["goals"][1]["lifecycle_status"] = "entered-in-error"
    merged, conflicts, removed = _merge(base, copy.deepcopy(base), theirs)
    assert conflicts == [] and removed == [{"kind": "goal", "id": "g2", "how": "entered-in-error"}]
    assert merged["goals"][1]["lifecycle_status"] == "entered-in-error" and "removed_in_ehr" not in merged["goals"][1]

    ours = copy.deepcopy(base)
    ours["goals"][1]["notes"] = [{"text": "Slept well"}]
    merged, conflicts, removed = _merge(base, ours, theirs)
    assert [(c.path, c.theirs["lifecycle_status"]) for c in conflicts] == [("goals[id=g2]", "entered-in-error")]
    assert removed == [] and merged["goals"][1] == ours["goals"][1]


def test_an_item_already_recorded_is_not_recorded_again_and_accepting_a_deletion_keeps_the_item():
    base = _plan()
    theirs = copy.deepcopy(base)
    theirs["goals"] = theirs["goals"][1:]
    merged, _, _ = _merge(base, copy.deepcopy(base), theirs, {"g1": "3"})
    again, conflicts, removed = _merge(theirs, merged, theirs, {"g1": "3"})  # the next pull: base is the server's
    assert conflicts == [] and removed == [] and again == merged

    document = _plan()
    assert accept_removal(document, "goals[id=g2]", None, AT)
    assert document["goals"][1]["removed_in_ehr"] == {"at": AT, "how": "deleted"}
    assert document["goals"][1]["lifecycle_status"] == "entered-in-error"
    assert not accept_removal(document, "goals[id=g2].lifecycle_status", None, AT)
    assert not accept_removal(document, "goals[id=g1]", {"id": "g1"}, AT)


@responses.activate
def test_the_last_version_of_a_deleted_goal_is_read_from_its_history_with_numeric_or_uuid_version_ids():
    # HAPI numbers versions (any order in the Bundle: the greatest is the newest); Medplum's are UUIDs, which
    # have no order: the history Bundle lists the newest first.
    system = "https://planbridge.test/id/goal"

    def history(*versions: str) -> dict:
        return {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [
                {"resource": {"resourceType": "Goal", "id": "g", "meta": {"versionId": v},
                              "identifier": [{"system": system, "value": "plan-1/goal-walk"}]}}
                for v in versions
            ],
        }  # fmt: skip

    base = "http://fhir.test/r4"
    responses.get(f"{base}/Goal/7/_history", json=history("2", "10", "9"))
    uuids = ("0d4c3f6e-8a0e-4f4e-9e0a-2b7e1d1c2a11", "f3b0a9c2-1d2e-4c5f-8a9b-0c1d2e3f4a5b")
    responses.get(f"{base}/Goal/8/_history", json=history(*uuids))
    found = deleted_goals(FhirClient(base), ["Goal/7", "Goal/8"], system, "plan-1")
    assert found == {"Goal/7": ("goal-walk", "10"), "Goal/8": ("goal-walk", uuids[0])}

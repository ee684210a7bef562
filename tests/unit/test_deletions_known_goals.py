"""service.sync.deletions: which plan goal a deleted `Goal/<id>` was (known_goals), and which goals a resolution
writes again as new Goals (written_again), for a conflict on one goal and on the whole goal list."""

from types import SimpleNamespace

from mappings import datatypes as dt
from service.sync.deletions import known_goals, written_again


def _link(key: str, rtype: str, fhir_id: str) -> SimpleNamespace:
    return SimpleNamespace(local_key=key, resource_type=rtype, fhir_id=fhir_id)


def _goal(goal_id: str, source: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=goal_id, fhir_extra={dt.SOURCE: source} if source else {})


def test_links_name_goals_first_and_a_source_mark_only_a_goal_without_a_link():
    links = [
        _link("goal:goal-7", "Goal", "7"),
        _link("goal:goal-walk", "Goal", "21"),
        _link("observation:goal-7/obs-9", "Observation", "9"),
        _link("careplan", "CarePlan", "3"),
    ]
    goals = [_goal("goal-7", "Goal/7"), _goal("goal-8", "Goal/8"), _goal("goal-walk", "Goal/5"), _goal("goal-x")]
    assert known_goals(links, goals) == {"Goal/7": "goal-7", "Goal/21": "goal-walk", "Goal/8": "goal-8"}


def _doc() -> dict:
    return {
        "goals": [
            {"id": "goal-7", "fhir_extra": {dt.SOURCE: "Goal/7", "x": 1}},
            {"id": "goal-8", "fhir_extra": {dt.SOURCE: "Goal/8"}},
            {"id": "goal-9", "removed_in_ehr": {"how": "deleted"}, "fhir_extra": {dt.SOURCE: "Goal/9"}},
        ]
    }


def test_a_goal_conflict_resolved_ours_writes_that_goal_again():
    document = _doc()
    assert written_again(document, "goals[id=goal-7]", None) == ["goal-7"]
    assert document["goals"][0]["fhir_extra"] == {"x": 1}
    assert document["goals"][1]["fhir_extra"] == {dt.SOURCE: "Goal/8"}
    assert written_again(_doc(), "goals[id=goal-7]", {"id": "goal-7"}) == []  # the server still has it
    assert written_again(_doc(), "goals[id=goal-7].status", None) == []


def test_a_goal_list_conflict_resolved_ours_writes_again_each_goal_the_servers_list_lacks():
    document = _doc()
    assert written_again(document, "goals", [{"id": "goal-8"}]) == ["goal-7"]  # goal-9 stays recorded removed
    assert dt.SOURCE not in document["goals"][0]["fhir_extra"]
    assert document["goals"][1]["fhir_extra"] == {dt.SOURCE: "Goal/8"}
    assert written_again(_doc(), "goals", None) == ["goal-7", "goal-8"]
    assert written_again(_doc(), "steps", None) == []

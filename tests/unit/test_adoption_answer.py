"""`adoption_answer`: what POST /plans/adopt and `plans adopt` say of CarePlans that cannot be a plan."""

import pytest

from service.sync.adopt import NotAdoptable, adoption_answer


def test_an_adoption_answer_says_why_a_careplan_was_not_adopted_beside_those_that_were():
    why = {"careplan": "CarePlan/9", "reason": "a plan is about one Patient", "errors": {"CarePlan.subject": "a Group"}}
    answer = adoption_answer({"careplan-8": "new", "careplan-9": "invalid"}, {"careplan-9": why})

    assert answer == [
        {"plan_id": "careplan-8", "outcome": "new"},
        {"plan_id": "careplan-9", "outcome": "invalid", **why},
    ]
    with pytest.raises(NotAdoptable) as refused:
        adoption_answer({"careplan-9": "invalid"}, {"careplan-9": why})
    assert refused.value.refused == [{"plan_id": "careplan-9", **why}]
    assert str(refused.value) == "CarePlan/9 cannot be adopted: a plan is about one Patient (CarePlan.subject: a Group)"

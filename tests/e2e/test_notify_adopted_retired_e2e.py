"""An adopted plan that stops being adopted through the documented interfaces (the EHR deletes its CarePlan,
`planbridge sync repair` writes the plan again under planbridge's identifiers) leaves its patient's four
Subscriptions by subject unneeded: the next `planbridge subscribe` deletes them (before, they stayed on the
server for ever). On the local FHIR server, both profiles."""

from __future__ import annotations

from service.cli_sync import subscribe, sync
from service.store.uow import UnitOfWork
from service.sync import subscriptions
from tests.e2e.test_adopted_notifications import pb  # noqa: F401  (the fixture)
from tests.e2e.test_adoption import Ehr


def test_a_plan_adopted_no_more_loses_its_patients_subscriptions_on_the_next_subscribe(pb):  # noqa: F811
    ehr = Ehr(pb.settings.fhir_base_url or "")
    plan_id, patient = f"careplan-{ehr.a['id']}", f"Patient/{ehr.patient['id']}"
    adopted = pb.adopt({"careplan": f"CarePlan/{ehr.a['id']}"})
    assert adopted["notifications"]["patients"] == [patient]
    pb.settle()
    written = pb.cli(subscribe)
    assert sorted(s["adopted_patient"] for s in written if s["adopted_patient"]) == [patient] * 4

    # The EHR deletes the CarePlan; the repair finds it gone and writes the plan again as planbridge's own.
    ehr.fhir.request("DELETE", f"CarePlan/{ehr.a['id']}")
    repaired = pb.cli(sync, "repair", "--plan", plan_id)
    assert repaired[plan_id] == "recreated"
    assert subscriptions.adopted_patient_ids(UnitOfWork(pb.engine)) == []  # adopted no more

    again = pb.cli(subscribe)
    assert [s["adopted_patient"] for s in again] == [None] * 3
    left = pb.ours()
    assert [subscriptions.patient_of(s) for s in left] == [None] * 3  # the patient's four are gone

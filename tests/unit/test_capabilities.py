import copy

from service.fhir.capabilities import NEEDS, missing_capabilities


def full_statement() -> dict:
    resources = []
    for rtype, (interactions, cond_update, _create) in NEEDS.items():
        resources.append(
            {
                "type": rtype,
                "interaction": [{"code": c} for c in sorted(interactions | {"create"})],
                "conditionalUpdate": cond_update,
                "conditionalCreate": True,
                "searchParam": [{"name": "identifier"}, {"name": "patient"}],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "interaction": [{"code": "transaction"}], "resource": resources}],
    }


def test_a_server_with_everything_lacks_nothing():
    assert missing_capabilities(full_statement(), create_patients=True) == []


def test_each_gap_is_named():
    statement = copy.deepcopy(full_statement())
    rest = statement["rest"][0]
    rest["interaction"] = [{"code": "batch"}]
    goal = next(r for r in rest["resource"] if r["type"] == "Goal")
    goal["conditionalUpdate"] = False
    goal["interaction"] = [{"code": "read"}]
    rest["resource"] = [r for r in rest["resource"] if r["type"] != "CareTeam"]
    statement["fhirVersion"] = "5.0.0"
    gaps = missing_capabilities(statement)
    assert any("R4" in g for g in gaps)
    assert any("transaction" in g for g in gaps)
    assert any(g.startswith("Goal lacks the interaction(s) search-type, update") for g in gaps)
    assert any(g.startswith("Goal has no conditional update") for g in gaps)
    assert "CareTeam is not supported" in gaps


def test_creating_patients_needs_conditional_create_on_patient():
    statement = full_statement()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    patient["conditionalCreate"] = False
    assert missing_capabilities(statement) == []
    assert "Patient has no conditional create (If-None-Exist)" in missing_capabilities(statement, create_patients=True)

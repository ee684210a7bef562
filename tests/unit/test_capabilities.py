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


def test_the_worker_start_logs_what_the_server_lacks_and_never_stops_for_it(caplog):
    import logging

    import responses as rsps

    from service.fhir.capabilities import startup_check
    from service.fhir.client import FhirClient

    client = FhirClient("http://fhir.test/r4", max_retries=0)
    statement = full_statement()
    statement["rest"][0]["interaction"] = []
    log = logging.getLogger("test.startup")
    with rsps.RequestsMock() as mock, caplog.at_level(logging.INFO, logger="test.startup"):
        mock.add(rsps.GET, "http://fhir.test/r4/metadata", json=statement)
        assert any("transaction" in gap for gap in startup_check(client, False, log))
        mock.add(rsps.GET, "http://fhir.test/r4/metadata", status=503)
        assert startup_check(client, False, log) == []
    assert "lacks what planbridge uses: no transaction interaction" in caplog.text
    assert "could not read the FHIR server's CapabilityStatement (FhirServerError)" in caplog.text

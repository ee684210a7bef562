from service.fhir.capabilities import missing_capabilities
from service.fhir.client import FhirClient


def test_the_fhir_server_used_in_tests_has_what_planbridge_needs(fhir_base_url):
    assert missing_capabilities(FhirClient(fhir_base_url).capabilities(), create_patients=True) == []

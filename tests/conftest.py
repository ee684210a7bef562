"""Session-wide fixtures shared by all test suites."""

import os

import pytest

from service.devfhir import LocalFhirServer


@pytest.fixture(scope="session")
def fhir_base_url(tmp_path_factory):
    """Base URL of a FHIR R4 server: $FHIR_TEST_SERVER_URL, else one local server for the session."""
    external = os.environ.get("FHIR_TEST_SERVER_URL")
    if external:
        yield external.rstrip("/")
        return
    server = LocalFhirServer(log_path=tmp_path_factory.mktemp("fhir-server") / "fhir-server.log")
    try:
        yield server.start()
    finally:
        server.stop()

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


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how much the model-based and property tests ran (examples, steps, events), even when they pass."""
    lines = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            counts = {k: v for k, v in getattr(report, "user_properties", []) if k in ("examples", "steps", "events")}
            if counts and report.when == "call":
                lines.append(f"{report.nodeid} ({outcome}): " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if lines:
        terminalreporter.section("how much the model-based and property tests ran")
        for line in lines:
            terminalreporter.line(line)

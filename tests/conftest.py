"""Session-wide fixtures shared by all test suites."""

import gc
import os

import pytest

from service.devfhir import PROFILES, LocalFhirServer, default_profile
from tests.ehr_world import seed_ehr_world


class LocalFhirServers:
    """The local FHIR servers of a test session, one per profile, each started when first asked for."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.servers: dict[str, LocalFhirServer] = {}
        self.urls: dict[str, str] = {}

    def url(self, profile: str) -> str:
        """Base URL of the session's server with this profile ("medplum" or "hapi"), started if need be."""
        if profile not in self.urls:
            log = self.tmp_path_factory.mktemp(f"fhir-server-{profile}") / "fhir-server.log"
            server = LocalFhirServer(profile=profile, log_path=log)
            self.servers[profile] = server
            self.urls[profile] = server.start()
            seed_ehr_world(self.urls[profile])  # the EHR resources the fixture plans name
        return self.urls[profile]

    def stop(self) -> None:
        """Stop every server started."""
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def local_fhir_servers(tmp_path_factory):
    """The session's local FHIR servers by profile (started lazily, stopped at the end)."""
    servers = LocalFhirServers(tmp_path_factory)
    try:
        yield servers
    finally:
        servers.stop()


_seeded: set[str] = set()


def _external() -> str | None:
    url = os.environ.get("FHIR_TEST_SERVER_URL")
    if not url:
        return None
    url = url.rstrip("/")
    if url not in _seeded:
        seed_ehr_world(url)  # the EHR resources the fixture plans name, once per session
        _seeded.add(url)
    return url


@pytest.fixture(scope="session")
def fhir_base_url(local_fhir_servers):
    """Base URL of a FHIR R4 server: $FHIR_TEST_SERVER_URL, else the session's local server with the
    profile PLANBRIDGE_FHIR_PROFILE names, by default "medplum" (Medplum's transaction limits, the strictest)."""
    return _external() or local_fhir_servers.url(default_profile())


@pytest.fixture(scope="session")
def fhir_medplum_url(local_fhir_servers):
    """Base URL of the session's local server in the medplum profile (skipped with $FHIR_TEST_SERVER_URL)."""
    if _external():
        pytest.skip("FHIR_TEST_SERVER_URL is set: the local server's profiles are not in use")
    return local_fhir_servers.url("medplum")


@pytest.fixture(scope="session")
def fhir_hapi_url(local_fhir_servers):
    """Base URL of the session's local server in the hapi profile (skipped with $FHIR_TEST_SERVER_URL)."""
    if _external():
        pytest.skip("FHIR_TEST_SERVER_URL is set: the local server's profiles are not in use")
    return local_fhir_servers.url("hapi")


@pytest.fixture(params=PROFILES, ids=PROFILES)
def fhir_profile(request) -> str:
    """Each local FHIR server profile in turn ("medplum", "hapi"): a test asking for it runs once per profile."""
    return request.param


@pytest.fixture
def fhir_profile_url(fhir_profile, local_fhir_servers) -> str:
    """Base URL of the session's local server in fhir_profile's profile, for tests that run against both.
    With $FHIR_TEST_SERVER_URL the external server is used for the "medplum" run and "hapi" is skipped."""
    external = _external()
    if external:
        if fhir_profile != PROFILES[0]:
            pytest.skip("FHIR_TEST_SERVER_URL is set: one external server, run once")
        return external
    return local_fhir_servers.url(fhir_profile)


# A test that takes both a database and a server profile runs on two pairs, not on all four combinations:
# SQLite against the strict medplum profile, PostgreSQL against hapi (as the model-based sync test does).
# Each database and each profile is still covered; what the pairs skip is a combination whose parts the
# test already meets separately. `@pytest.mark.paired("database", "width", sqlite="phone", ...)` pairs
# other parameters the same way.
PAIRED_PROFILES = {"sqlite": "medplum", "postgres": "hapi"}


def _pairs(item: pytest.Item) -> list[tuple[str, str, dict[str, str]]]:
    pairs = [("database", "fhir_profile", PAIRED_PROFILES)] if not _external() else []
    for marker in item.iter_markers("paired"):
        first, second = marker.args
        pairs.append((first, second, dict(marker.kwargs)))
    return pairs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the combinations of paired parameters that are not a pair (see PAIRED_PROFILES)."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        unpaired = any(
            first in params and second in params and mapping.get(params[first], params[second]) != params[second]
            for first, second, mapping in _pairs(item)
        )
        (dropped if unpaired else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


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


@pytest.fixture(autouse=True, scope="module")
def _collect_engines_a_module_left():
    """After each test module, collect what it left unreferenced: an engine a test made and never disposed holds
    its pool's database connections until the cyclic collector frees it, and PostgreSQL allows 100 at once."""
    yield
    gc.collect()

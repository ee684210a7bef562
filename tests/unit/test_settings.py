import pytest

from service.domain.errors import ConfigurationError
from service.settings import DEFAULT_DATABASE_URL, Settings
from service.signing import new_secret


def test_defaults_need_no_environment():
    s = Settings.from_env({})
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.fhir_base_url is None and s.webhook_secrets == () and s.create_patients is False


def test_every_setting_is_read():
    a, b = new_secret(), new_secret()
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/x",
            "FHIR_BASE_URL": "https://ehr.example.org/fhir/",
            "FHIR_TIMEOUT": "5",
            "PLANBRIDGE_WEBHOOK_SECRET": f"{a} {b}",
            "PLANBRIDGE_MRN_SYSTEM": "urn:oid:1.2.3",
            "PLANBRIDGE_IDENTIFIER_BASE": "https://pb.example/id/",
            "PLANBRIDGE_CREATE_PATIENTS": "yes",
            "PLANBRIDGE_MAX_BODY_BYTES": "4096",
            "PLANBRIDGE_OUTBOX_MAX_ATTEMPTS": "3",
            "PLANBRIDGE_WORKER_POLL_SECONDS": "0.5",
            "PLANBRIDGE_LOG_LEVEL": "debug",
        }
    )
    assert s.fhir_base_url == "https://ehr.example.org/fhir"
    assert s.webhook_secrets == (a, b)
    assert (s.fhir_timeout, s.max_body_bytes, s.outbox_max_attempts, s.worker_poll_seconds) == (5.0, 4096, 3, 0.5)
    assert s.identifier_base == "https://pb.example/id" and s.create_patients is True and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLANBRIDGE_WEBHOOK_SECRET", "not-a-secret"),
        ("PLANBRIDGE_CREATE_PATIENTS", "maybe"),
        ("FHIR_TIMEOUT", "fast"),
        ("PLANBRIDGE_MAX_BODY_BYTES", "10"),
        ("FHIR_BASE_URL", "ftp://x"),
    ],
)
def test_malformed_settings_are_refused_by_name(name, value):
    with pytest.raises(ConfigurationError) as err:
        Settings.from_env({name: value})
    assert err.value.data["setting"] == name

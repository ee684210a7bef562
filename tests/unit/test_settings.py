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


def test_auth_settings_are_read_and_incomplete_ones_refused_by_name():
    s = Settings.from_env(
        {
            "FHIR_AUTH": "smart",
            "SMART_CLIENT_ID": "pb",
            "SMART_PRIVATE_KEY_FILE": "/k.pem",
            "SMART_KEY_ID": "k1",
            "SMART_ALGORITHM": "es384",
            "SMART_SCOPE": "system/Goal.read",
        }
    )
    assert (s.fhir_auth, s.smart_algorithm, s.smart_scope) == ("smart", "ES384", "system/Goal.read")
    for env, missing in [
        ({"FHIR_AUTH": "bearer"}, "FHIR_BEARER_TOKEN"),
        ({"FHIR_AUTH": "basic", "FHIR_BASIC_USER": "u"}, "FHIR_BASIC_PASSWORD"),
        ({"FHIR_AUTH": "smart", "SMART_CLIENT_ID": "pb"}, "SMART_PRIVATE_KEY_FILE"),
        ({"FHIR_AUTH": "kerberos"}, "FHIR_AUTH"),
    ]:
        with pytest.raises(ConfigurationError) as err:
            Settings.from_env(env)
        assert err.value.data["setting"] == missing


def test_the_client_carries_the_configured_credentials():
    import responses

    from service.fhir.factory import client_from_settings

    for env, expected in [
        ({"FHIR_AUTH": "bearer", "FHIR_BEARER_TOKEN": "t0k"}, "Bearer t0k"),
        ({"FHIR_AUTH": "basic", "FHIR_BASIC_USER": "u", "FHIR_BASIC_PASSWORD": "p"}, "Basic dTpw"),
        ({}, None),
    ]:
        client = client_from_settings(Settings.from_env({"FHIR_BASE_URL": "http://fhir.test/r4", **env}))
        with responses.RequestsMock() as mock:
            mock.add(responses.GET, "http://fhir.test/r4/Goal/1", json={"resourceType": "Goal"})
            client.read("Goal", "1")
            assert mock.calls[0].request.headers.get("Authorization") == expected
    with pytest.raises(ConfigurationError, match="SMART_PRIVATE_KEY_FILE"):
        client_from_settings(
            Settings.from_env(
                {
                    "FHIR_BASE_URL": "http://x",
                    "FHIR_AUTH": "smart",
                    "SMART_CLIENT_ID": "a",
                    "SMART_KEY_ID": "k",
                    "SMART_PRIVATE_KEY_FILE": "/nonexistent",
                }
            )
        )


def test_named_senders_each_have_their_own_secrets():
    default, diet_old, diet_new, ehr = (new_secret() for _ in range(4))
    s = Settings.from_env(
        {
            "PLANBRIDGE_WEBHOOK_SECRET": default,
            "PLANBRIDGE_WEBHOOK_SENDERS": f" dietetics-app = {diet_new}, {diet_old} ;ehr.engine_2={ehr};",
        }
    )
    assert s.webhook_senders == (("dietetics-app", (diet_new, diet_old)), ("ehr.engine_2", (ehr,)))
    assert s.signing_secrets == (
        ("default", default),
        ("dietetics-app", diet_new),
        ("dietetics-app", diet_old),
        ("ehr.engine_2", ehr),
    )
    alone = Settings.from_env({"PLANBRIDGE_WEBHOOK_SENDERS": f"ehr={ehr}"})
    assert alone.webhook_secrets == () and alone.signing_secrets == (("ehr", ehr),)


@pytest.mark.parametrize(
    "senders",
    [
        "ehr",  # no secrets at all
        "ehr=",
        "EHR=whsec_" + "A" * 32,  # names are lower case
        "=whsec_" + "A" * 32,
        "ehr=not-a-secret",
        "ehr=whsec_" + "A" * 32 + "; ehr=whsec_" + "B" * 32,  # a name twice
        "default=whsec_" + "B" * 32,  # 'default' is PLANBRIDGE_WEBHOOK_SECRET's
        "a=whsec_" + "B" * 32 + "; b=whsec_" + "B" * 32,  # one secret, two senders: who signed?
        "a=whsec_" + "C" * 32,  # the default sender's secret again
    ],
)
def test_malformed_or_ambiguous_senders_are_refused_by_name(senders):
    env = {"PLANBRIDGE_WEBHOOK_SECRET": "whsec_" + "C" * 32, "PLANBRIDGE_WEBHOOK_SENDERS": senders}
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env(env)
    assert refused.value.data["setting"] == "PLANBRIDGE_WEBHOOK_SENDERS"

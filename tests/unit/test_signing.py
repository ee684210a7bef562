from datetime import UTC, datetime, timedelta

import pytest

from service.signing import SignatureInvalid, new_secret, sign_headers, verify, verify_sender

BODY = b'{"type": "goal.proposed"}'


def test_a_signed_body_verifies_and_yields_the_webhook_id():
    secret = new_secret()
    assert verify([secret], BODY, sign_headers(secret, BODY, "msg_1")) == "msg_1"


def test_any_active_secret_verifies_so_keys_can_rotate():
    old, new = new_secret(), new_secret()
    assert verify([new, old], BODY, sign_headers(old, BODY, "msg_2")) == "msg_2"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "other"}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
        lambda h, b: ({**h, "webhook-signature": "v1,not-base64!!"}, b),
        lambda h, b: ({**h, "webhook-signature": "garbage"}, b),
        lambda h, b: ({**h, "webhook-timestamp": "soon"}, b),
        lambda h, b: (h, b"\xff\xfe"),
    ],
)
def test_tampering_is_refused(tamper):
    secret = new_secret()
    headers, body = tamper(sign_headers(secret, BODY, "msg_3"), BODY)
    with pytest.raises(SignatureInvalid):
        verify([secret], body, headers)


def test_wrong_secret_is_refused():
    with pytest.raises(SignatureInvalid):
        verify([new_secret()], BODY, sign_headers(new_secret(), BODY))


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_timestamps_more_than_five_minutes_off_are_refused(offset):
    secret = new_secret()
    headers = sign_headers(secret, BODY, at=datetime.now(UTC) + offset)
    with pytest.raises(SignatureInvalid, match="too"):
        verify([secret], BODY, headers)


def test_the_secret_that_verifies_names_the_sender():
    diet_old, diet_new, ehr = new_secret(), new_secret(), new_secret()
    pairs = [("dietetics", diet_new), ("dietetics", diet_old), ("ehr", ehr)]
    assert verify_sender(pairs, BODY, sign_headers(diet_old, BODY, "msg_4")) == ("dietetics", "msg_4")
    assert verify_sender(pairs, BODY, sign_headers(ehr, BODY, "msg_4")) == ("ehr", "msg_4")
    with pytest.raises(SignatureInvalid):
        verify_sender(pairs[:2], BODY, sign_headers(ehr, BODY))  # the EHR's secret was withdrawn


def test_a_body_that_is_not_utf8_is_verified_over_its_bytes():
    # So a signed one can be refused for what it is (400), and an unsigned one stays unsigned (401).
    secret, body = new_secret(), b'{"type": "\xff\xfe"}'
    assert verify([secret], body, sign_headers(secret, body, "msg_5")) == "msg_5"
    with pytest.raises(SignatureInvalid):
        verify([secret], body + b" ", sign_headers(secret, body))
    with pytest.raises(SignatureInvalid):
        verify([new_secret()], body, sign_headers(secret, body))
    with pytest.raises(SignatureInvalid, match="too old"):
        verify([secret], body, sign_headers(secret, body, at=datetime.now(UTC) - timedelta(minutes=6)))

"""Standard Webhooks signing and verification (https://www.standardwebhooks.com/), via `standardwebhooks`."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.domain.errors import PlanbridgeError

DEFAULT_SENDER = "default"  # the sender whose secrets are PLANBRIDGE_WEBHOOK_SECRET


class SignatureInvalid(PlanbridgeError):
    """The request is not signed by any of the configured secrets (or its timestamp is off)."""

    code = "signature-invalid"


def new_secret() -> str:
    """Return a fresh `whsec_` secret (24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign_headers(secret: str, body: bytes, msg_id: str | None = None, at: datetime | None = None) -> dict[str, str]:
    """Return the three webhook-* headers that sign `body`."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body.decode("utf-8"))
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def verify(secrets_: Iterable[str], body: bytes, headers: Mapping[str, str]) -> str:
    """Return the webhook id if any secret's signature matches; raise SignatureInvalid otherwise."""
    return verify_sender(((DEFAULT_SENDER, s) for s in secrets_), body, headers)[1]


def verify_sender(senders: Iterable[tuple[str, str]], body: bytes, headers: Mapping[str, str]) -> tuple[str, str]:
    """Return (sender, webhook id) for the first (sender, secret) pair whose signature matches.

    A sender may have several active secrets (so keys can rotate); the secret that verifies names the
    sender, since no two senders share one. Raise SignatureInvalid when none matches.
    """
    wanted = {k.lower(): v for k, v in headers.items() if k.lower().startswith("webhook-")}
    if not {"webhook-id", "webhook-timestamp", "webhook-signature"} <= wanted.keys():
        raise SignatureInvalid("webhook-id, webhook-timestamp and webhook-signature headers are required")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureInvalid("the body is not UTF-8, so it cannot be verified") from None
    reason = "no signature matches"
    for sender, secret in senders:
        try:
            Webhook(secret).verify(text, wanted, json_parse=False)
            return sender, wanted["webhook-id"]
        except WebhookVerificationError as exc:
            reason = str(exc)
            if "timestamp" in reason.lower() or "headers" in reason.lower():
                break  # the same for every secret
        except (ValueError, TypeError):  # malformed signature list or base64
            reason = "malformed webhook-signature header"
            break
    raise SignatureInvalid(f"signature rejected: {reason}")

"""SMART Backend Services against a local token endpoint that checks assertions as an EHR would."""

import secrets
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from service.fhir.auth import SmartBackendAuth, SmartConfig
from service.fhir.client import FhirClient
from service.fhir.errors import FhirAuthError


def keypair(alg: str) -> tuple[str, object]:
    key = rsa.generate_private_key(65537, 2048) if alg == "RS384" else ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), key.public_key()


class AuthServer:
    """A token endpoint, its discovery document, and one protected FHIR read."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, public key)
        self.seen_jti: set[str] = set()
        self.tokens: dict[str, float] = {}  # token -> expiry
        self.assertions: list[dict] = []
        self.revoke_next = False
        app = Flask("auth")
        app.add_url_rule("/fhir/.well-known/smart-configuration", view_func=self.discovery)
        app.add_url_rule("/token", view_func=self.token, methods=["POST"])
        app.add_url_rule("/fhir/Goal/<gid>", view_func=self.goal)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def discovery(self):
        return jsonify(token_endpoint=f"{self.url}/token", grant_types_supported=["client_credentials"])

    def token(self):
        form = request.form
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return jsonify(error="invalid_request"), 400
        assertion = form.get("client_assertion", "")
        kid = jwt.get_unverified_header(assertion).get("kid")
        if kid not in self.keys:
            return jsonify(error="invalid_client"), 401
        alg, public = self.keys[kid]
        try:
            claims = jwt.decode(assertion, public, algorithms=[alg], audience=f"{self.url}/token")
        except jwt.InvalidTokenError as exc:
            return jsonify(error="invalid_client", error_description=str(exc)), 401
        if claims["iss"] != claims["sub"] or claims["exp"] > time.time() + 300 or claims["jti"] in self.seen_jti:
            return jsonify(error="invalid_client"), 401
        self.seen_jti.add(claims["jti"])
        self.assertions.append({"claims": claims, "scope": form.get("scope")})
        token = secrets.token_urlsafe(16)
        self.tokens[token] = time.time() + 300
        return jsonify(access_token=token, token_type="bearer", expires_in=300, scope=form.get("scope"))

    def goal(self, gid: str):
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.revoke_next:
            self.revoke_next = False
            self.tokens.pop(token, None)
        if token not in self.tokens:
            return jsonify(resourceType="OperationOutcome", issue=[{"severity": "error", "code": "login"}]), 401
        return jsonify(resourceType="Goal", id=gid)


@pytest.fixture
def server():
    s = AuthServer()
    yield s
    s.server.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def smart_client(server: AuthServer, alg: str, clock=time.time) -> tuple[FhirClient, SmartBackendAuth]:
    pem, public = keypair(alg)
    server.keys[f"key-{alg}"] = (alg, public)
    config = SmartConfig(
        client_id="planbridge", private_key_pem=pem, key_id=f"key-{alg}", algorithm=alg, scope="system/Goal.read"
    )
    auth = SmartBackendAuth(config, f"{server.url}/fhir", clock=clock)
    return FhirClient(f"{server.url}/fhir", auth=auth, sleep=lambda _s: None), auth


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_a_signed_assertion_gets_a_token_that_is_reused(server, alg):
    client, auth = smart_client(server, alg)
    for gid in ("1", "2", "3"):
        assert client.read("Goal", gid)["id"] == gid
    assert auth.tokens_fetched == 1
    (sent,) = server.assertions
    assert sent["claims"]["iss"] == sent["claims"]["sub"] == "planbridge"
    assert sent["claims"]["exp"] - sent["claims"]["iat"] <= 300
    assert sent["scope"] == "system/Goal.read"


def test_the_token_is_renewed_before_it_expires(server):
    clock = Clock()
    client, auth = smart_client(server, "RS384", clock)
    client.read("Goal", "1")
    clock.now += 300 - SmartBackendAuth.RENEW_BEFORE + 1  # inside the renewal window, not yet expired
    client.read("Goal", "1")
    assert auth.tokens_fetched == 2
    assert len({a["claims"]["jti"] for a in server.assertions}) == 2  # a fresh assertion each time


def test_a_401_renews_the_token_once(server):
    client, auth = smart_client(server, "ES384")
    client.read("Goal", "1")
    server.revoke_next = True
    assert client.read("Goal", "2")["id"] == "2"
    assert auth.tokens_fetched == 2


def test_an_unknown_key_is_refused_with_a_clear_error(server):
    client, _ = smart_client(server, "RS384")
    server.keys.clear()
    with pytest.raises(FhirAuthError, match="token request refused"):
        client.read("Goal", "1")

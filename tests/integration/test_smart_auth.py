"""SMART Backend Services against a local token endpoint that checks assertions as an EHR would."""

import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from service.domain.errors import ConfigurationError
from service.fhir.auth import SmartBackendAuth, SmartConfig, check_signing_key, scopes_for
from service.fhir.client import FhirClient
from service.fhir.errors import FhirAuthError
from tests.cli_support import run_planbridge


def keypair(alg: str) -> tuple[str, object]:
    key = rsa.generate_private_key(65537, 2048) if alg == "RS384" else ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), key.public_key()


class AuthServer:
    """A token endpoint, its discovery document, and one protected FHIR read."""

    def __init__(self, expires_in: int = 300, capabilities: list[str] | None = None) -> None:
        self.expires_in, self.capabilities = expires_in, capabilities
        self.keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, public key)
        self.seen_jti: set[str] = set()
        self.tokens: dict[str, float] = {}  # token -> expiry
        self.assertions: list[dict] = []
        self.revoke_next = False
        app = Flask("auth")
        app.add_url_rule("/fhir/.well-known/smart-configuration", view_func=self.discovery)
        app.add_url_rule("/token", view_func=self.token, methods=["POST"])
        app.add_url_rule("/fhir/Goal/<gid>", view_func=self.goal)
        app.add_url_rule("/fhir/metadata", view_func=self.metadata)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def discovery(self):
        extra = {} if self.capabilities is None else {"capabilities": self.capabilities}
        return jsonify(token_endpoint=f"{self.url}/token", grant_types_supported=["client_credentials"], **extra)

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
        self.tokens[token] = time.time() + self.expires_in
        return jsonify(access_token=token, token_type="bearer", expires_in=self.expires_in, scope=form.get("scope"))

    def goal(self, gid: str):
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.revoke_next:
            self.revoke_next = False
            self.tokens.pop(token, None)
        if token not in self.tokens:
            return jsonify(resourceType="OperationOutcome", issue=[{"severity": "error", "code": "login"}]), 401
        return jsonify(resourceType="Goal", id=gid)

    def metadata(self):
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            return jsonify(resourceType="OperationOutcome", issue=[{"severity": "error", "code": "login"}]), 401
        return jsonify(resourceType="CapabilityStatement", fhirVersion="4.0.1", rest=[])


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


def test_tokens_that_live_60_seconds_are_reused_until_near_their_end():
    server = AuthServer(expires_in=60)
    try:
        clock = Clock()
        client, auth = smart_client(server, "ES384", clock)
        for _ in range(20):  # 20 requests over 47.5 s of the token's 60: one token
            client.read("Goal", "1")
            clock.now += 2.5
        assert auth.tokens_fetched == 1 and len(server.assertions) == 1
        clock.now += 1  # 48.5 s: under a fifth of its lifetime left, so it is renewed before use
        client.read("Goal", "1")
        assert auth.tokens_fetched == 2
        for _ in range(10):
            client.read("Goal", "1")
        assert auth.tokens_fetched == 2
    finally:
        server.server.shutdown()


@pytest.mark.parametrize(
    ("capabilities", "version", "asked"),
    [
        (
            ["permission-v2", "client-confidential-asymmetric"],
            "v2",
            "system/Patient.rs system/Goal.cruds system/Observation.cud",
        ),
        (["permission-v1"], "v1", "system/Patient.read system/Goal.* system/Observation.write"),
        (None, "v1", "system/Patient.read system/Goal.* system/Observation.write"),
    ],
)
def test_scopes_are_asked_in_v2_syntax_only_when_the_server_advertises_permission_v2(capabilities, version, asked):
    server = AuthServer(capabilities=capabilities)
    try:
        pem, public = keypair("RS384")
        server.keys["k"] = ("RS384", public)
        config = SmartConfig(
            "planbridge", pem, "k", "RS384", "system/Patient.read system/Goal.* system/Observation.write"
        )
        auth = SmartBackendAuth(config, f"{server.url}/fhir")
        FhirClient(f"{server.url}/fhir", auth=auth, sleep=lambda _s: None).read("Goal", "1")
        assert (server.assertions[0]["scope"], auth.scope_version) == (asked, version)
    finally:
        server.server.shutdown()


def test_scope_syntax_translates_both_ways_and_leaves_what_has_no_counterpart():
    assert (
        scopes_for("system/*.read system/Goal.write user/Goal.*", True) == "system/*.rs system/Goal.cud user/Goal.cruds"
    )
    assert scopes_for("system/Goal.rs system/Goal.cud system/Goal.cruds", False) == (
        "system/Goal.read system/Goal.write system/Goal.*"
    )
    assert scopes_for("system/Goal.rs launch/patient system/Observation.rs?category=vital-signs", True) == (
        "system/Goal.rs launch/patient system/Observation.rs?category=vital-signs"
    )
    assert scopes_for("system/Goal.read system/Goal.rs", False) == "system/Goal.read"  # the same scope once


def pem_of(key, encryption=None) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption or serialization.NoEncryption()
    ).decode()


@pytest.mark.parametrize(
    ("make", "algorithm", "words"),
    [
        (
            lambda: pem_of(rsa.generate_private_key(65537, 2048)),
            "ES384",
            "ES384 needs an EC private key on the curve P-384",
        ),
        (
            lambda: pem_of(ec.generate_private_key(ec.SECP384R1())),
            "RS384",
            "RS384 needs an RSA private key of 2048 bits",
        ),
        (lambda: pem_of(ec.generate_private_key(ec.SECP256R1())), "ES384", "holds an EC key on the curve secp256r1"),
        (lambda: pem_of(rsa.generate_private_key(65537, 1024)), "RS384", "holds an RSA key of 1024 bits"),
        (
            lambda: pem_of(rsa.generate_private_key(65537, 2048), serialization.BestAvailableEncryption(b"pw")),
            "RS384",
            "encrypted private key",
        ),
        (
            lambda: (
                rsa.generate_private_key(65537, 2048)
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode()
            ),
            "RS384",
            "not a PEM private key",
        ),
    ],
)
def test_a_key_that_cannot_sign_with_the_algorithm_is_refused_when_the_client_is_made(make, algorithm, words):
    pem = make()
    with pytest.raises(ConfigurationError, match=words) as refused:
        SmartBackendAuth(SmartConfig("planbridge", pem, "k", algorithm), "http://127.0.0.1:9/fhir")
    assert "\n" not in refused.value.detail and refused.value.data["setting"].startswith("SMART_")
    check_signing_key(pem_of(rsa.generate_private_key(65537, 2048)), "RS384")  # a fitting key passes
    check_signing_key(pem_of(ec.generate_private_key(ec.SECP384R1())), "ES384")


BIN = Path(sys.executable).parent / "planbridge"


def smart_env(tmp_path, server_url: str, pem: str, algorithm: str) -> dict[str, str]:
    key_file = tmp_path / "smart.pem"
    key_file.write_text(pem)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRIDGE_", "FHIR_", "SMART_", "DATABASE_URL"))}
    return {
        **env,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'planbridge.db'}",
        "FHIR_BASE_URL": f"{server_url}/fhir",
        "FHIR_AUTH": "smart",
        "SMART_CLIENT_ID": "planbridge",
        "SMART_KEY_ID": "k",
        "SMART_PRIVATE_KEY_FILE": str(key_file),
        "SMART_ALGORITHM": algorithm,
    }


@pytest.mark.parametrize("command", [("fhir", "check"), ("worker", "--once")])
def test_the_commands_refuse_a_mismatched_key_at_start_up_in_one_line(tmp_path, server, command):
    env = smart_env(tmp_path, server.url, pem_of(rsa.generate_private_key(65537, 2048)), "ES384")
    run_planbridge(["db", "upgrade"], env=env, timeout=60, check=True, text=False)
    done = run_planbridge(command, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line == (
        "Error: SMART_ALGORITHM=ES384 needs an EC private key on the curve P-384 (secp384r1), but "
        "SMART_PRIVATE_KEY_FILE holds an RSA key of 2048 bits (or set SMART_ALGORITHM=RS384)"
    )
    assert server.assertions == []  # nothing was asked of the token endpoint


def test_fhir_check_fetches_a_token_and_says_which_scope_syntax_the_server_takes(tmp_path):
    server = AuthServer(expires_in=60, capabilities=["permission-v2"])
    try:
        pem, public = keypair("ES384")
        server.keys["k"] = ("ES384", public)
        env = smart_env(tmp_path, server.url, pem, "ES384")
        run_planbridge(["db", "upgrade"], env=env, timeout=60, check=True, text=False)
        done = run_planbridge(["fhir", "check"], env=env, timeout=60)
        smart = json.loads(done.stdout)["smart"]
        assert smart["token_endpoint"] == f"{server.url}/token" and smart["scopes"] == "v2"
        assert "system/Goal.cruds" in smart["scope"] and smart["token_lifetime_seconds"] == 60
        assert server.assertions[0]["scope"] == smart["scope"]
    finally:
        server.server.shutdown()

"""Production verification against an OpenID Connect issuer's JWKS, served by a real local
HTTP server on 127.0.0.1: discovery, RS256 and ES256, rotation (a new kid appears),
audience / expiry / issuer checks, algorithm confusion, and the refusal to start with
insecure settings."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.auth import InsecureSettings, JwksKeys, TokenVerifier, build_verifier, check_settings
from api.errors import Unauthorised
from cluster.settings import Settings


class Issuer:
    """A tiny OpenID Connect issuer: discovery document and JWKS, keys added at will."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.requests: list[str] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                issuer.requests.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys"}
                elif self.path == "/keys":
                    body = {"keys": [issuer.jwk(kid) for kid in issuer.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_key(self, kid: str, kind: str = "RS256", publish: bool = True) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RS256" \
            else ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        key = self.keys[kid]
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
        return {**data, "kid": kid, "use": "sig", "alg": "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"}

    def token(self, kid: str, *, alg: str | None = None, key: Any = None, **over: Any) -> str:
        now = time.time()
        claims = {"iss": self.url, "aud": "pulseline-prod", "exp": int(now + 600), "iat": int(now),
                  "sub": "ops-1", "kind": "operator", **over}
        private = key if key is not None else self.keys[kid]
        algorithm = alg or ("RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(claims, private, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def production(issuer: Issuer, **over: Any) -> Settings:
    base: dict[str, Any] = {"auth_mode": "production", "auth_issuer": issuer.url, "auth_audience": "pulseline-prod",
                            "auth_leeway_s": 5, "auth_jwks_min_refetch_s": 0}
    return Settings(**{**base, **over})


def reason(run: Any, verifier: Any, token: str) -> str:
    with pytest.raises(Unauthorised) as refused:
        run(verifier.verify(token))
    return str(refused.value.reason.value)


def test_rs256_and_es256_tokens_verify_against_the_discovered_jwks(issuer: Issuer, run: Any) -> None:
    issuer.add_key("rsa-1")
    issuer.add_key("ec-1", "ES256")
    verifier = build_verifier(production(issuer))
    for kid in ("rsa-1", "ec-1"):
        who = run(verifier.verify(issuer.token(kid)))
        assert who.kind.value == "operator" and who.subject == "ops-1"
    assert issuer.requests[0] == "/.well-known/openid-configuration"
    assert issuer.requests.count("/keys") == 1  # cached: one fetch for both tokens


def test_key_rotation_a_new_kid_is_fetched_when_first_seen(issuer: Issuer, run: Any) -> None:
    issuer.add_key("2025")
    verifier = build_verifier(production(issuer))
    assert run(verifier.verify(issuer.token("2025"))).subject == "ops-1"
    issuer.add_key("2026", publish=False)
    assert reason(run, verifier, issuer.token("2026")) == "unknown_key"  # not published yet
    issuer.published.append("2026")  # the issuer rotates: the new kid appears
    assert run(verifier.verify(issuer.token("2026"))).subject == "ops-1"
    issuer.published.remove("2025")  # and the old one is retired; cached until the next fetch
    assert run(verifier.verify(issuer.token("2025"))).subject == "ops-1"


def test_unknown_kids_do_not_hammer_the_issuer(issuer: Issuer, run: Any) -> None:
    issuer.add_key("k1")
    verifier = build_verifier(production(issuer, auth_jwks_min_refetch_s=60))
    run(verifier.verify(issuer.token("k1")))
    fetches = issuer.requests.count("/keys")
    for i in range(20):
        assert reason(run, verifier, issuer.token(f"forged-{i}", key=issuer.keys["k1"])) == "unknown_key"
    assert issuer.requests.count("/keys") == fetches


def test_production_refuses_bad_tokens_with_reasons(issuer: Issuer, run: Any) -> None:
    issuer.add_key("rsa")
    issuer.add_key("ec", "ES256")
    verifier = build_verifier(production(issuer))
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    assert reason(run, verifier, issuer.token("rsa", key=attacker)) == "bad_signature"  # forged
    assert reason(run, verifier, issuer.token("rsa", aud="another-api")) == "wrong_audience"
    assert reason(run, verifier, issuer.token("rsa", exp=int(now - 60))) == "expired"
    assert run(verifier.verify(issuer.token("rsa", exp=int(now - 2)))).subject == "ops-1"  # within leeway
    assert reason(run, verifier, issuer.token("rsa", iss="https://elsewhere.example")) == "wrong_issuer"
    assert reason(run, verifier, issuer.token("rsa", nbf=int(now + 600))) == "not_yet_valid"
    # a shared-secret token is never accepted in production, whatever it is signed with
    hs = jwt.encode({"iss": issuer.url, "aud": "pulseline-prod", "exp": int(now + 60), "sub": "x", "kind": "operator"},
                    "a-shared-secret-long-enough-for-hs256", algorithm="HS256")
    assert reason(run, verifier, hs) == "bad_algorithm"
    # an RS256 header on the EC key's kid: algorithm confusion is refused
    assert reason(run, verifier, issuer.token("ec", alg="RS256", key=issuer.keys["rsa"])) == "bad_algorithm"
    assert reason(run, verifier, issuer.token("rsa", kind="root")) == "bad_claims"


def test_production_refuses_to_start_with_defaults_or_a_shared_secret(issuer: Issuer) -> None:
    with pytest.raises(InsecureSettings, match="ISSUER"):
        check_settings(Settings(auth_mode="production"))
    with pytest.raises(InsecureSettings, match="development secret"):
        check_settings(Settings(auth_mode="production", auth_issuer="https://id.example", auth_secret="hunter2" * 8))
    with pytest.raises(InsecureSettings, match="https"):
        check_settings(Settings(auth_mode="production", auth_issuer="http://id.example"))
    with pytest.raises(InsecureSettings, match="https"):
        check_settings(Settings(auth_mode="production", auth_issuer="https://id.example", auth_jwks_url="http://id.example/k"))
    check_settings(production(issuer))  # loopback http is allowed (tests, sidecars)


def test_a_verifier_with_the_issuers_keys_but_no_issuer_is_refused(issuer: Issuer, run: Any) -> None:
    # Without an issuer to compare with, PyJWT skips the 'iss' check: such a verifier
    # accepted a token naming any issuer. It is refused at construction now.
    issuer.add_key("k1")
    keys = JwksKeys(issuer=issuer.url, jwks_url=None, cache_s=60, min_refetch_s=0)
    try:
        for missing in (None, ""):
            with pytest.raises(ValueError, match="needs the issuer"):
                TokenVerifier(audience="pulseline-prod", leeway_s=5, keys=keys, issuer=missing)
        verifier = TokenVerifier(audience="pulseline-prod", leeway_s=5, keys=keys, issuer=issuer.url)
        assert run(verifier.verify(issuer.token("k1"))).subject == "ops-1"
        assert reason(run, verifier, issuer.token("k1", iss="https://elsewhere.example")) == "wrong_issuer"
    finally:
        run(keys.aclose())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_production_edge_serves_issuer_tokens_only(issuer: Issuer, edge_settings: Any, unique_id: str) -> None:
    from api.app import create_app
    from tests.conftest import EdgeServer

    issuer.add_key("rsa")
    settings = edge_settings.model_copy(update={
        "auth_mode": "production", "auth_issuer": issuer.url, "auth_audience": "pulseline-prod",
        "port": _free_port(), "auth_secret": None,
    })
    server = EdgeServer(settings).start()
    try:
        ops = {"Authorization": f"Bearer {issuer.token('rsa')}"}
        assert httpx.post(f"{server.url}/v1/sessions", json={"id": f"prod-{unique_id}"}, headers=ops, timeout=30).status_code == 201
        viewer = {"Authorization": f"Bearer {issuer.token('rsa', kind='participant', participant='ann')}"}
        assert httpx.get(f"{server.url}/v1/sessions/prod-{unique_id}", headers=viewer).status_code == 403
        assert httpx.post(f"{server.url}/v1/dev/tokens", json={"kind": "operator"}).status_code == 404  # no dev route
    finally:
        server.stop()
    with pytest.raises(InsecureSettings):
        create_app(edge_settings.model_copy(update={"auth_mode": "production", "auth_issuer": None}))

"""Who is calling: JWT verification for every edge connection.

Tokens are JWTs whose claims say what they were issued for (``docs/security.md``)::

    {"iss": ..., "aud": "pulseline", "exp": ..., "sub": ..., "jti"?: ...,
     "kind": "device" | "hub" | "participant" | "operator" | "viewer",
     "sessions"?: [...], "participant"?: ..., "device"?: ..., "hub"?: ..., "devices"?: [...]}

Two ways to verify, chosen by ``Settings.auth_mode``:

* **production** — RS256/ES256 tokens of an OpenID Connect issuer, checked against the
  issuer's published keys (JWKS, discovered from ``/.well-known/openid-configuration``
  unless ``auth_jwks_url`` is set). Keys are cached; an unknown ``kid`` refetches the set
  (at most every ``auth_jwks_min_refetch_s``, so forged kids cannot hammer the issuer),
  which is how key rotation is picked up. Audience, issuer and expiry are checked with
  ``auth_leeway_s`` of clock skew.
* **development** — HS256 tokens signed with a shared secret: ``auth_secret`` or a random
  one generated into ``data_dir/dev-secret`` (mode 0600). ``pulseline token`` and the
  loopback-only ``POST /v1/dev/tokens`` mint them for demos, sims and tests.

``check_settings`` refuses to start outside development without an issuer, or with a
shared secret. ``TokenVerifier.verify`` returns a ``Principal`` or raises
``Unauthorised`` with an ``AuthReason``; it never raises anything else (an issuer that
cannot be reached raises ``Unavailable``).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
import jwt

from api.errors import Unauthorised, Unavailable
from devices.text import TextError, clean_id

if TYPE_CHECKING:
    from cluster.settings import Settings

log = logging.getLogger(__name__)

DEV_ISSUER = "pulseline-dev"
DEV_SECRET_FILE = "dev-secret"
ISSUER_ALGORITHMS = ("RS256", "ES256")
MAX_LIST_CLAIM = 1024
MIN_SECRET_BYTES = 32



def _id(value: Any, name: str) -> str:
    """The protocol's id rule (``devices.text.clean_id``), NFC-normalised like a ``hello``'s ids."""
    try:
        return clean_id(value, f"claim {name!r}")
    except TextError as exc:
        raise _bad(f"{exc} (an id: 1-128 printable characters)") from None


class TokenKind(str, enum.Enum):
    DEVICE = "device"
    HUB = "hub"
    PARTICIPANT = "participant"
    OPERATOR = "operator"
    VIEWER = "viewer"  # view-only: the board of the one session it names, nothing else


class AuthReason(str, enum.Enum):
    """Why a token was not accepted (HTTP 401, WebSocket close 4401)."""

    MISSING = "missing_token"
    MALFORMED = "malformed_token"
    BAD_ALGORITHM = "bad_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    BAD_CLAIMS = "bad_claims"


class InsecureSettings(ValueError):
    """The settings would run an unauthenticated or guessable edge outside development."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified token: what it may do is decided by ``api.scopes``.

    ``sessions`` is None when the token is not limited to sessions (hub, participant and
    operator tokens may omit the claim); device tokens always name theirs.
    """

    kind: TokenKind
    subject: str
    token_id: str
    expires_at: float
    sessions: frozenset[str] | None = None
    participant: str | None = None
    device: str | None = None
    hub: str | None = None
    devices: frozenset[str] = frozenset()

    def describe(self) -> str:
        return f"{self.kind.value}:{self.subject}"


# -- claims -------------------------------------------------------------------------------
def _bad(message: str) -> Unauthorised:
    return Unauthorised(AuthReason.BAD_CLAIMS, message)


def _id_claim(claims: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    return _id(value, name)


def _list_claim(claims: dict[str, Any], name: str, *, required: bool) -> frozenset[str] | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not 0 < len(value) <= MAX_LIST_CLAIM:
        raise _bad(f"claim {name!r} must be a list of 1-{MAX_LIST_CLAIM} ids")
    return frozenset(_id(item, name) for item in value)


def principal_from_claims(claims: dict[str, Any], token_id: str) -> Principal:
    """The claims a kind needs: device (device, participant, sessions), hub (hub, devices,
    sessions?), participant (participant, sessions?), operator (nothing more), viewer
    (sessions: exactly one)."""
    try:
        kind = TokenKind(claims.get("kind"))
    except ValueError:
        raise _bad("claim 'kind' must be device, hub, participant, operator or viewer") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 256:
        raise _bad("claim 'sub' must be a string")
    expires_at = claims.get("exp")
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        raise _bad("claim 'exp' must be a number")
    sessions = _list_claim(claims, "sessions", required=kind in (TokenKind.DEVICE, TokenKind.VIEWER))
    if kind is TokenKind.VIEWER and len(sessions or ()) != 1:
        raise _bad("a viewer token names exactly one session in claim 'sessions'")
    return Principal(
        kind=kind,
        subject=subject,
        token_id=token_id,
        expires_at=float(expires_at),
        sessions=sessions,
        participant=_id_claim(claims, "participant", required=kind in (TokenKind.DEVICE, TokenKind.PARTICIPANT)),
        device=_id_claim(claims, "device", required=kind is TokenKind.DEVICE),
        hub=_id_claim(claims, "hub", required=kind is TokenKind.HUB),
        devices=_list_claim(claims, "devices", required=kind is TokenKind.HUB) or frozenset(),
    )


def _token_id(token: str, claims: dict[str, Any]) -> str:
    jti = claims.get("jti")
    if isinstance(jti, str) and 0 < len(jti) <= 128:
        return jti
    return hashlib.sha256(token.encode()).hexdigest()[:24]


# -- development secret and minting ---------------------------------------------------------
def dev_secret(settings: Settings) -> bytes:
    """``auth_secret`` if set, else the data dir's generated secret (created on first use)."""
    if settings.auth_secret is not None:
        return settings.auth_secret.get_secret_value().encode()
    return _secret_file(Path(settings.data_dir) / DEV_SECRET_FILE)


def _secret_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_urlsafe(48).encode())
    log.warning("generated a development signing secret in %s (development mode only)", path)
    return path.read_bytes().strip()


def mint_token(
    secret: bytes,
    *,
    kind: TokenKind | str,
    audience: str = "pulseline",
    ttl_s: float = 3600.0,
    now: float | None = None,
    subject: str | None = None,
    **claims: Any,
) -> str:
    """A development (HS256) token. ``claims``: sessions, participant, device, hub, devices.

    Refuses (``ValueError``) claims the verifier would refuse, so a minted token is usable.
    """
    issued = time.time() if now is None else now
    kind = TokenKind(kind)
    body = {k: (sorted(v) if isinstance(v, list | set | frozenset | tuple) else v) for k, v in claims.items() if v is not None}
    default_subject = body.get("device") or body.get("hub") or body.get("participant") or "operator"
    payload: dict[str, Any] = {
        "iss": DEV_ISSUER, "aud": audience, "iat": int(issued), "exp": int(issued + ttl_s),
        "sub": subject or f"{kind.value}:{default_subject}", "jti": secrets.token_hex(8),
        "kind": kind.value, **body,
    }
    try:
        principal_from_claims(payload, payload["jti"])
    except Unauthorised as exc:
        raise ValueError(exc.message) from None
    return jwt.encode(payload, secret, algorithm="HS256")


# -- the issuer's keys ------------------------------------------------------------------------
class JwksKeys:
    """The issuer's signing keys by ``kid``: cached, refreshed when stale or on an unknown kid."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str | None,
        cache_s: float,
        min_refetch_s: float,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.jwks_url = jwks_url
        self.cache_s = cache_s
        self.min_refetch_s = min_refetch_s
        self.client = client or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = 0.0
        self.attempted_at = -float("inf")
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        wanted = not self.keys or now - self.fetched_at > self.cache_s or (kid or "") not in self.keys
        if wanted and self._may_refetch(now):
            await self._refresh(now)
        if not self.keys:
            raise Unavailable("the token issuer's keys cannot be fetched")
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        found = self.keys.get(kid or "")
        if found is None:
            raise Unauthorised(AuthReason.UNKNOWN_KEY, "token signed by a key the issuer does not publish")
        return found

    def _may_refetch(self, now: float) -> bool:
        return now - self.attempted_at >= self.min_refetch_s

    async def _refresh(self, now: float) -> None:
        async with self._lock:
            if self.attempted_at >= now:  # another caller refreshed while we waited
                return
            self.attempted_at = time.monotonic()
            try:
                self.keys = await self._fetch()
                self.fetched_at = time.monotonic()
                self.fetches += 1
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("could not fetch the issuer's keys (%s): %s", self.issuer, exc)

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        url = self.jwks_url or await self._discover()
        response = await self.client.get(url)
        response.raise_for_status()
        keys: dict[str, jwt.PyJWK] = {}
        for entry in response.json()["keys"][:100]:
            if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid"), str):
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue
            if key.algorithm_name in ISSUER_ALGORITHMS:
                keys[entry["kid"]] = key
        log.info("issuer %s publishes keys %s", self.issuer, sorted(keys))
        return keys

    async def _discover(self) -> str:
        response = await self.client.get(f"{self.issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        url = response.json()["jwks_uri"]
        _require_secure_url(url, "jwks_uri")
        self.jwks_url = url
        return url  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self.client.aclose()


# -- verification -------------------------------------------------------------------------------
_JWT_REASONS: tuple[tuple[type[Exception], AuthReason], ...] = (
    (jwt.ExpiredSignatureError, AuthReason.EXPIRED),
    (jwt.ImmatureSignatureError, AuthReason.NOT_YET_VALID),
    (jwt.InvalidAudienceError, AuthReason.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, AuthReason.WRONG_ISSUER),
    (jwt.InvalidSignatureError, AuthReason.BAD_SIGNATURE),
    (jwt.MissingRequiredClaimError, AuthReason.BAD_CLAIMS),
    (jwt.InvalidAlgorithmError, AuthReason.BAD_ALGORITHM),
)


def _reason_for(exc: Exception) -> AuthReason:
    for kind, reason in _JWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return AuthReason.MALFORMED


VERIFIED_TOKENS = 20_000  # tokens a verifier remembers having verified (the oldest go first)
VERIFIED_FOR_S = 60.0  # ... for at most this long (and never past the token's expiry)


class TokenVerifier:
    """Turns a bearer token into a ``Principal`` (or ``Unauthorised``).

    ``keys`` (the issuer's JWKS) need ``issuer``: tokens they verify must name it exactly
    in ``iss``; a verifier with keys and no issuer is refused (``ValueError``) rather than
    accepting issuer-signed tokens whatever their ``iss``.

    A token it has verified is remembered (the exact token string) for up to
    ``VERIFIED_FOR_S`` and never past its ``exp`` (plus the leeway): the same token again —
    an operator's on every join, a phone reconnecting after a network blip — costs no
    signature check. So a key withdrawn from the issuer's JWKS stops being accepted for
    tokens seen in the last minute within a minute, not at once.
    """

    def __init__(
        self,
        *,
        audience: str,
        leeway_s: float,
        secret: bytes | None = None,
        issuer: str | None = None,
        keys: JwksKeys | None = None,
    ) -> None:
        if keys is not None and not issuer:
            raise ValueError("a verifier with the issuer's keys needs the issuer to compare 'iss' with")
        self.audience = audience
        self.leeway_s = leeway_s
        self.secret = secret
        self.issuer = issuer
        self.keys = keys
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, valid until)

    async def verify(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorised(AuthReason.MISSING, "a bearer token is required")
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[token]
        try:
            claims = await self._decode(token)
        except (Unauthorised, Unavailable):
            raise
        except Exception as exc:  # PyJWT, cryptography and binascii all raise their own kinds
            reason = _reason_for(exc)
            raise Unauthorised(reason, f"token refused: {reason.value}") from None
        principal = principal_from_claims(claims, _token_id(token, claims))
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (principal, min(principal.expires_at + self.leeway_s, now + VERIFIED_FOR_S))
        return principal

    async def _decode(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg == "HS256" and self.secret is not None:
            key: Any = self.secret
            issuer = DEV_ISSUER
        elif alg in ISSUER_ALGORITHMS and self.keys is not None and self.issuer:
            kid = header.get("kid")
            jwk = await self.keys.key(kid if isinstance(kid, str) else None)
            if jwk.algorithm_name != alg:
                raise Unauthorised(AuthReason.BAD_ALGORITHM, f"key {kid!r} is not an {alg} key")
            key, issuer = jwk.key, self.issuer
        else:
            raise Unauthorised(AuthReason.BAD_ALGORITHM, f"tokens signed with {str(alg)[:16]!r} are not accepted")
        return jwt.decode(  # type: ignore[no-any-return]
            token, key, algorithms=[alg], audience=self.audience, issuer=issuer, leeway=self.leeway_s,
            options={"require": ["exp", "sub", "aud", "iss"]},
        )

    async def aclose(self) -> None:
        if self.keys is not None:
            await self.keys.aclose()


def _is_loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def _require_secure_url(url: str, name: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and _is_loopback(parsed.hostname)):
        raise InsecureSettings(f"{name} must be an https URL (or http on loopback), not {url!r}")


def check_settings(settings: Settings) -> None:
    """Refuse to run production with a missing issuer, a shared secret or insecure URLs."""
    if settings.auth_secret is not None and len(settings.auth_secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
        raise InsecureSettings(f"PULSELINE_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes (or unset: one is generated)")
    if settings.auth_mode != "production":
        if not _is_loopback(settings.host):
            log.warning("development auth (a shared HS256 secret) on %s: never do this on the internet", settings.host)
        return
    if not settings.auth_issuer:
        raise InsecureSettings("production needs PULSELINE_AUTH_ISSUER (the OpenID Connect issuer URL)")
    _require_secure_url(settings.auth_issuer, "auth_issuer")
    if settings.auth_jwks_url:
        _require_secure_url(settings.auth_jwks_url, "auth_jwks_url")
    if settings.auth_secret is not None:
        raise InsecureSettings("PULSELINE_AUTH_SECRET is a development secret; production verifies the issuer's keys")
    if not settings.auth_audience:
        raise InsecureSettings("production needs PULSELINE_AUTH_AUDIENCE")


def build_verifier(settings: Settings) -> TokenVerifier:
    """The verifier for these settings, after ``check_settings``."""
    check_settings(settings)
    keys = None
    if settings.auth_issuer:
        keys = JwksKeys(
            issuer=settings.auth_issuer, jwks_url=settings.auth_jwks_url,
            cache_s=settings.auth_jwks_cache_s, min_refetch_s=settings.auth_jwks_min_refetch_s,
        )
    return TokenVerifier(
        audience=settings.auth_audience,
        leeway_s=settings.auth_leeway_s,
        secret=dev_secret(settings) if settings.auth_mode == "development" else None,
        issuer=settings.auth_issuer,  # compared exactly, as OpenID Connect asks
        keys=keys,
    )


def dev_token(settings: Settings, *, kind: TokenKind | str, ttl_s: float | None = None, **claims: Any) -> str:
    """Mint a development token these settings' edge accepts (tests, sims, the CLI)."""
    if settings.auth_mode != "development":
        raise InsecureSettings("development tokens are refused outside development mode")
    if TokenKind(kind) is TokenKind.VIEWER:  # view links are short-lived whatever is asked
        ttl_s = min(settings.view_token_max_ttl_s, settings.view_token_ttl_s if ttl_s is None else ttl_s)
        if claims.get("sessions") and not claims.get("subject"):
            claims["subject"] = f"viewer:{sorted(claims['sessions'])[0]}"
    return mint_token(
        dev_secret(settings), kind=kind, audience=settings.auth_audience,
        ttl_s=settings.dev_token_ttl_s if ttl_s is None else ttl_s, **claims,
    )

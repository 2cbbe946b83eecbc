"""What a verified token may do, and the one place refusals are logged.

The rules (``docs/security.md`` has the full matrix):

=============  ==========================================================================
kind           may
=============  ==========================================================================
device         write its own ``device`` for its own ``participant`` in its ``sessions``
hub            write for the ``devices`` registered to it (the token's ``devices`` claim),
               any participant, in its ``sessions`` (every session when the claim is absent)
participant    join / leave itself; read the board and state of sessions it has joined
               (it is on the roster), within its ``sessions`` when the claim is present;
               read and set its own rider profile
operator       create sessions, change phase (end them), flush, join/leave anyone, read any
               board and state, leaderboards and cluster status, read and set any profile
=============  ==========================================================================

Everything else raises ``Forbidden`` with a ``ScopeReason``. ``Gate`` authenticates
(``api.auth``) and logs every refusal (rate-limited per reason, and counted in
``pulseline_auth_refusals_total``); ``principal`` / ``operator`` are FastAPI dependencies.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Collection, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter

from api.auth import Principal, TokenKind, TokenVerifier
from api.errors import AuthError, Forbidden, Unauthorised
from devices.protocol import DeviceBinding

log = logging.getLogger(__name__)

REFUSALS = Counter("pulseline_auth_refusals_total", "Requests and frames refused by auth", ["status", "reason"])


class ScopeReason(str, enum.Enum):
    """Why a valid token may not do this (HTTP 403, WebSocket close 4403 / error frame)."""

    WRONG_KIND = "wrong_kind"
    WRONG_SESSION = "wrong_session"
    WRONG_PARTICIPANT = "wrong_participant"
    WRONG_DEVICE = "wrong_device"
    WRONG_HUB = "wrong_hub"
    NOT_JOINED = "not_joined"
    NOT_SAME_PRINCIPAL = "not_same_principal"


def _token_of(kind: TokenKind) -> str:
    """'a viewer token', 'an operator token'."""
    return f"{'an' if kind.value[0] in 'aeiou' else 'a'} {kind.value} token"


def _forbid(reason: ScopeReason, message: str) -> Forbidden:
    return Forbidden(reason, message)


def _check_session(p: Principal, session: str) -> None:
    if p.sessions is not None and session not in p.sessions:
        raise _forbid(ScopeReason.WRONG_SESSION, f"token not issued for session {session!r}")


def authorise_write(p: Principal, binding: DeviceBinding, *, hub: str | None = None) -> None:
    """May ``p`` send samples of ``binding`` (device, participant, session)?"""
    if p.kind is TokenKind.DEVICE:
        if binding.device != p.device:
            raise _forbid(ScopeReason.WRONG_DEVICE, f"token is for device {p.device!r}, not {binding.device!r}")
        if binding.participant != p.participant:
            raise _forbid(ScopeReason.WRONG_PARTICIPANT, f"token is for participant {p.participant!r}")
    elif p.kind is TokenKind.HUB:
        if hub is not None and hub != p.hub:
            raise _forbid(ScopeReason.WRONG_HUB, f"token is for hub {p.hub!r}, not {hub!r}")
        if binding.device not in p.devices:
            raise _forbid(ScopeReason.WRONG_DEVICE, f"device {binding.device!r} is not registered to hub {p.hub!r}")
    else:
        raise _forbid(ScopeReason.WRONG_KIND, f"{_token_of(p.kind)} cannot send samples")
    _check_session(p, binding.session)


def authorise_operator(p: Principal, action: str = "this") -> None:
    if p.kind is not TokenKind.OPERATOR:
        raise _forbid(ScopeReason.WRONG_KIND, f"only an operator token may do {action}")


def authorise_membership(p: Principal, session: str, participant: str) -> None:
    """Join or leave ``participant`` to/from ``session``: operators, or the participant itself."""
    if p.kind is TokenKind.OPERATOR:
        return
    if p.kind is not TokenKind.PARTICIPANT:
        raise _forbid(ScopeReason.WRONG_KIND, f"{_token_of(p.kind)} cannot change a roster")
    if participant != p.participant:
        raise _forbid(ScopeReason.WRONG_PARTICIPANT, f"token is for participant {p.participant!r}")
    _check_session(p, session)


def authorise_profile(p: Principal, rider: str) -> None:
    """Read or set ``rider``'s profile: operators, or the rider's own participant token."""
    if p.kind is TokenKind.OPERATOR:
        return
    if p.kind is not TokenKind.PARTICIPANT:
        raise _forbid(ScopeReason.WRONG_KIND, f"{_token_of(p.kind)} cannot read or set rider profiles")
    if rider != p.participant:
        raise _forbid(ScopeReason.WRONG_PARTICIPANT, f"token is for participant {p.participant!r}")


def authorise_board(p: Principal, session: str) -> bool:
    """Watch a session's board without its roster: operators, and viewer tokens issued for
    it (True); a token for other sessions is refused; every other kind needs the roster
    (False: apply ``authorise_read``). Decided before the session is looked up, so a token
    cannot probe which sessions it was not issued for exist."""
    if p.kind is TokenKind.OPERATOR:
        return True
    _check_session(p, session)
    return p.kind is TokenKind.VIEWER


def reader_of(p: Principal, session: str) -> str:
    """The participant a non-operator token may read ``session`` as, if it is on the roster
    (what ``authorise_read`` checks before the roster: the roster is looked up only then)."""
    if p.kind is not TokenKind.PARTICIPANT:
        raise _forbid(ScopeReason.WRONG_KIND, f"{_token_of(p.kind)} cannot read this session")
    _check_session(p, session)
    if p.participant is None:  # (the verifier requires it of participant tokens)
        raise _forbid(ScopeReason.WRONG_PARTICIPANT, "a participant token must name its participant")
    return p.participant


def authorise_read(p: Principal, session: str, roster: Collection[str]) -> None:
    """Read a session's board or state: operators, or a participant on its roster."""
    if p.kind is TokenKind.OPERATOR:
        return
    reader_of(p, session)
    if p.participant not in roster:
        raise _forbid(ScopeReason.NOT_JOINED, f"participant {p.participant!r} has not joined session {session!r}")


def authorise_renewal(old: Principal, new: Principal, bindings: Collection[DeviceBinding], hub: str | None) -> None:
    """A fresh token on a live connection must be the same principal and cover its devices."""
    if (new.kind, new.subject) != (old.kind, old.subject):
        raise _forbid(ScopeReason.NOT_SAME_PRINCIPAL, "a renewed token must be for the same subject")
    for binding in bindings:
        authorise_write(new, binding, hub=hub)


def roster_of(snapshot: Mapping[str, Any]) -> set[str]:
    """The participant ids of a session snapshot's rows (rows without a string id name no one)."""
    rows = snapshot.get("participants", [])
    return {pid for row in rows if isinstance(row, dict) and isinstance(pid := row.get("participant"), str)}


class Gate:
    """Authentication plus refusal logging, shared by HTTP routes and WebSockets."""

    def __init__(self, verifier: TokenVerifier, *, log_interval_s: float = 1.0) -> None:
        self.verifier = verifier
        self.log_interval_s = log_interval_s
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    async def authenticate(self, token: str | None, *, where: str, peer: str) -> Principal:
        try:
            return await self.verifier.verify(token)
        except Unauthorised as exc:
            raise self.refused(exc, where=where, who="anonymous", peer=peer) from None

    def refused(self, exc: AuthError, *, where: str, who: str, peer: str) -> AuthError:
        """Count and log a refusal (at most one line per reason per interval); returns ``exc``."""
        reason = getattr(exc.reason, "value", str(exc.reason))
        REFUSALS.labels(str(exc.status), reason).inc()
        now = time.monotonic()
        if now - self._last_logged.get(reason, -1e9) >= self.log_interval_s:
            self._last_logged[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
            log.warning(
                "refused %s %s: %s (%s) for %s from %s%s", exc.status, where, reason, exc.message, who, peer,
                f" (+{suppressed} similar)" if suppressed else "",
            )
        else:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
        return exc

    def check(self, p: Principal, rule: Any, *args: Any, where: str, peer: str, **kwargs: Any) -> None:
        """Apply one ``authorise_*`` rule; a refusal is logged and raised."""
        try:
            rule(p, *args, **kwargs)
        except Forbidden as exc:
            raise self.refused(exc, where=where, who=p.describe(), peer=peer) from None

    async def aclose(self) -> None:
        await self.verifier.aclose()


# -- FastAPI dependencies ----------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="A JWT (see docs/security.md)")


SUBPROTOCOL = "pulseline.v1"
BEARER_SUBPROTOCOL_PREFIX = "bearer."


def bearer_token(conn: Any) -> str | None:
    """A WebSocket's token, from the first of: ``Authorization: Bearer`` on the upgrade; a
    ``bearer.<jwt>`` entry in ``Sec-WebSocket-Protocol`` (how browsers, which cannot set
    headers on a WebSocket, keep the token out of URLs and access logs: offer it together
    with ``pulseline.v1``, which the edge selects); ``?token=`` (protocol v1 clients; the
    access log redacts it). HTTP routes take the header only."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()  # type: ignore[no-any-return]
    for offered in conn.scope.get("subprotocols") or ():
        if offered.startswith(BEARER_SUBPROTOCOL_PREFIX) and len(offered) > len(BEARER_SUBPROTOCOL_PREFIX):
            return offered[len(BEARER_SUBPROTOCOL_PREFIX):]  # type: ignore[no-any-return]
    return conn.query_params.get("token") or None  # type: ignore[no-any-return]


_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"]+")


def redact_tokens(text: str) -> str:
    """``text`` with every ``token=`` query value replaced by ``[redacted]``."""
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Keeps v1 clients' ``?token=`` out of uvicorn's access and WebSocket log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a for a in record.args):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction() -> None:
    """Add ``RedactTokens`` to uvicorn's loggers (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def chosen_subprotocol(conn: Any) -> str | None:
    """``pulseline.v1`` when the client offered it (a browser that offered subprotocols
    fails the handshake unless one is selected); the bearer entry is never echoed."""
    return SUBPROTOCOL if SUBPROTOCOL in (conn.scope.get("subprotocols") or ()) else None


def peer_of(request: Any) -> str:
    client = getattr(request, "client", None)
    return client.host if client is not None else "?"


def gate_of(request: Any) -> Gate:
    return request.app.state.gate  # type: ignore[no-any-return]


async def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller of an HTTP route (401 without a valid bearer token)."""
    token = credentials.credentials if credentials is not None else None
    return await gate_of(request).authenticate(token, where=f"{request.method} {request.url.path}", peer=peer_of(request))


async def operator(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """An operator caller (401 / 403 otherwise). Add as ``dependencies=[Depends(operator)]``."""
    gate_of(request).check(who, authorise_operator, f"{request.method} {request.url.path}",
                           where=f"{request.method} {request.url.path}", peer=peer_of(request))
    return who


async def member(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Any caller but a viewer token (those watch one session's board and do nothing else)."""
    if who.kind is TokenKind.VIEWER:
        raise gate_of(request).refused(
            _forbid(ScopeReason.WRONG_KIND, "a viewer token only watches the board of its session"),
            where=f"{request.method} {request.url.path}", who=who.describe(), peer=peer_of(request),
        )
    return who


Caller = Annotated[Principal, Depends(principal)]
Member = Annotated[Principal, Depends(member)]
Operator = Annotated[Principal, Depends(operator)]

"""Bearer tokens: JWT HS256 whose ``sub`` claim is the user id.

A *stream token* (CONTRACT.md §2) is the same kind of JWT with a ``scope`` claim
``stream:<conversation id>``: it reads only that conversation's feed and its messages'
streams, passed as ``?token=`` because a browser's ``EventSource`` cannot send headers. It is
refused as a bearer token everywhere else.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import uuid
from pathlib import Path

import jwt

from turnlog.config import Settings

ALGORITHM = "HS256"
STREAM_SCOPE = "stream:"


class Unauthorized(Exception):
    """No token, or one this server did not sign, or an expired one."""


def load_secret(settings: Settings) -> str:
    """TURNLOG_JWT_SECRET, else the secret generated once into the data dir (mode 0600)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = Path(settings.data_dir) / "jwt-secret"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL: when two processes race to create it, one wins and the other reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return secret


def secret_source(settings: Settings) -> str:
    """Which secret signs and checks tokens, in words (never the secret itself)."""
    if settings.jwt_secret:
        return "the secret in TURNLOG_JWT_SECRET"
    return f"the secret in {Path(settings.data_dir) / 'jwt-secret'} (data dir {settings.data_dir})"


def make_token(secret: str, user: str, ttl: int) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


def user_from_header(secret: str, authorization: str | None) -> str:
    """The user id of an ``Authorization: Bearer <token>`` header, or ``Unauthorized``."""
    if not authorization:
        raise Unauthorized("missing Authorization header; expected 'Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    try:
        claims = jwt.decode(
            token.strip(), secret, algorithms=[ALGORITHM], options={"require": ["sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired; make a new one with `turnlog token --user ID`") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized(
            "invalid token: it was not signed with this server's secret. Make one with "
            "`turnlog token --user ID`, run with the same TURNLOG_JWT_SECRET, or from the "
            "same directory (TURNLOG_DATA_DIR) as `turnlog serve`; both commands print the "
            "secret they use"
        ) from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    if "scope" in claims:
        raise Unauthorized("a stream token is not a bearer token; pass it as ?token= to a stream")
    return _sub(claims)


def _sub(claims: dict[str, object]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("token claim 'sub' must be a non-empty string")
    return sub


def make_stream_token(
    secret: str, user: str, conversation_id: uuid.UUID, ttl: int
) -> tuple[str, int]:
    """A token that reads only ``conversation_id``'s feed and streams for ``ttl`` seconds,
    and when it expires (Unix time)."""
    now = int(time.time())
    exp = now + ttl
    claims = {"sub": user, "scope": f"{STREAM_SCOPE}{conversation_id}", "iat": now, "exp": exp}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), exp


def stream_reader(secret: str, token: str) -> tuple[str, uuid.UUID]:
    """The user and conversation of a stream token, or ``Unauthorized``."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "scope", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("stream token expired; ask for a new one") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid stream token: {exc}") from None
    scope = claims["scope"]
    if not isinstance(scope, str) or not scope.startswith(STREAM_SCOPE):
        raise Unauthorized("not a stream token: its scope must be 'stream:<conversation id>'")
    try:
        conversation_id = uuid.UUID(scope.removeprefix(STREAM_SCOPE))
    except ValueError:
        raise Unauthorized("stream token scope names no conversation") from None
    return _sub(claims), conversation_id


def cli_token(settings: Settings, *, user: str, ttl: int) -> int:
    """``turnlog token --user ID [--ttl SECONDS]``: the token alone on one line."""
    if not user:
        print("turnlog token: --user must not be empty", file=sys.stderr)
        return 2
    if ttl <= 0:
        print(f"turnlog token: --ttl must be positive, got {ttl}", file=sys.stderr)
        return 2
    print(make_token(load_secret(settings), user, ttl))
    # On stderr: stdout is the token alone, for `TOKEN=$(turnlog token ...)`.
    print(f"turnlog token: signed with {secret_source(settings)}", file=sys.stderr)
    return 0

"""Bearer tokens: JWT HS256 whose ``sub`` claim is the user id."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import jwt

from turnlog.config import Settings

ALGORITHM = "HS256"


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
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("token claim 'sub' must be a non-empty string")
    return sub


def cli_token(settings: Settings, *, user: str, ttl: int) -> int:
    """``turnlog token --user ID [--ttl SECONDS]``: the token alone on one line."""
    if not user:
        print("turnlog token: --user must not be empty", file=sys.stderr)
        return 2
    if ttl <= 0:
        print(f"turnlog token: --ttl must be positive, got {ttl}", file=sys.stderr)
        return 2
    print(make_token(load_secret(settings), user, ttl))
    return 0

"""Bearer tokens: JWT HS256 whose ``sub`` claim is the user id.

A *stream token* (docs/protocol.md, "Browsers") is the same kind of JWT with a ``scope`` claim
``stream:<conversation id>``: it reads only that conversation's feed and its messages'
streams, passed as ``?token=`` because a browser's ``EventSource`` cannot send headers. It is
refused as a bearer token everywhere else.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time
import unicodedata
import uuid
from pathlib import Path

import jwt

from turnlog.config import Settings

ALGORITHM = "HS256"
STREAM_SCOPE = "stream:"
# The longest lifetime a token may have (and `turnlog token --ttl` may ask for).
MAX_TTL_S = 10 * 365 * 86400
# A user id is stored as the owner of rows, logged and compared: plain text of bounded size.
MAX_USER_ID_CHARS = 256


class Unauthorized(Exception):
    """No token, or one this server did not sign, or an expired one."""


class NoSecret(Exception):
    """The data dir has no secret and the caller may not create one."""


def load_secret(settings: Settings, *, create: bool = True) -> str:
    """TURNLOG_JWT_SECRET, else the secret generated once into the data dir (mode 0600);
    ``NoSecret`` if there is none there and not ``create``."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = Path(settings.data_dir) / "jwt-secret"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    if not create:
        raise NoSecret(
            f"no secret in data dir {settings.data_dir} (no {path}): `turnlog serve` creates "
            "it when it first starts, so run this where the server runs (the same "
            "TURNLOG_DATA_DIR, or the same TURNLOG_JWT_SECRET)"
        )
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


def user_id_problem(user: object) -> str | None:
    """What is wrong with ``user`` as a user id (a token's ``sub``), or None if nothing:
    a non-empty string of at most MAX_USER_ID_CHARS characters, no control characters
    (NUL included) and no lone surrogates (text PostgreSQL and the log can hold)."""
    if not isinstance(user, str):
        return f"must be a string, got {type(user).__name__}"
    if not user:
        return "must not be empty"
    if len(user) > MAX_USER_ID_CHARS:
        return f"is {len(user)} characters long; at most {MAX_USER_ID_CHARS} are accepted"
    for ch in user:
        category = unicodedata.category(ch)
        if category == "Cc":
            return f"must not contain control characters, found U+{ord(ch):04X}"
        if category == "Cs":
            return f"must be valid Unicode text, found a lone surrogate U+{ord(ch):04X}"
    return None


def secret_source(settings: Settings) -> str:
    """Which secret signs and checks tokens, in words (never the secret itself)."""
    if settings.jwt_secret:
        return "the secret in TURNLOG_JWT_SECRET"
    return f"the secret in {Path(settings.data_dir) / 'jwt-secret'} (data dir {settings.data_dir})"


def make_token(secret: str, user: str, ttl: int) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


# Bearer tokens verified already: (secret, token) -> (user id, exp). A client sends the
# same token with every request, and PyJWT's decode (parse, HMAC, claim checks) costs about
# 90 µs, a few percent of a send. Only tokens that passed every check are kept, each only
# until its own exp (then it is decoded again and refused as PyJWT refuses it); the other
# checks cannot start failing later. At most VERIFIED_MAX, the oldest dropped first.
_verified: dict[tuple[str, str], tuple[str, float]] = {}
VERIFIED_MAX = 4096


def user_from_header(secret: str, authorization: str | None) -> str:
    """The user id of an ``Authorization: Bearer <token>`` header, or ``Unauthorized``."""
    if not authorization:
        raise Unauthorized("missing Authorization header; expected 'Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    key = (secret, token.strip())
    hit = _verified.get(key)
    if hit is not None:
        if hit[1] > time.time():
            return hit[0]
        del _verified[key]  # expired: the decode below says so
    user = _bearer_user(secret, key[1])
    if len(_verified) >= VERIFIED_MAX:
        del _verified[next(iter(_verified))]
    _verified[key] = user
    return user[0]


def _bearer_user(secret: str, token: str) -> tuple[str, float]:
    """The user id of a bearer token and until when it holds (inf: no exp), verified."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub"]})
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
    exp = claims.get("exp")
    # PyJWT read an exp with int() (a numeric string too) and compares that with the time.
    return _sub(claims), math.inf if exp is None else int(exp)


def _sub(claims: dict[str, object]) -> str:
    """The user id of a verified token's claims, checked (and its expiry, for sanity)."""
    exp = claims.get("exp")
    if isinstance(exp, int | float | str) and float(exp) > time.time() + MAX_TTL_S:
        # PyJWT checked it is a number; one far in the future is a token nobody should hold.
        raise Unauthorized(
            f"token claim 'exp' lies more than {MAX_TTL_S // 86400} days in the future"
        )
    sub = claims.get("sub")
    problem = user_id_problem(sub)
    if problem is not None:
        raise Unauthorized(f"token claim 'sub' {problem}")
    assert isinstance(sub, str)
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


def cli_token(settings: Settings, *, user: str, ttl: int, create: bool = False) -> int:
    """``turnlog token --user ID [--ttl SECONDS] [--create-secret]``: the token alone on one
    line. A data dir without a secret is an error unless ``create``: a token signed with a
    new secret would not be one the running server accepts."""
    problem = user_id_problem(user)
    if problem is not None:
        # !a: undecodable bytes in argv arrive as lone surrogates, unprintable as is.
        print(f"turnlog token: --user {user!a} {problem}", file=sys.stderr)
        return 2
    if not 0 < ttl <= MAX_TTL_S:
        print(
            f"turnlog token: --ttl must be between 1 and {MAX_TTL_S} seconds, got {ttl}",
            file=sys.stderr,
        )
        return 2
    try:
        secret = load_secret(settings, create=create)
    except NoSecret as exc:
        print(f"turnlog token: {exc}; or pass --create-secret to make one here", file=sys.stderr)
        return 1
    print(make_token(secret, user, ttl))
    # On stderr: stdout is the token alone, for `TOKEN=$(turnlog token ...)`.
    print(f"turnlog token: signed with {secret_source(settings)}", file=sys.stderr)
    return 0

"""Routes the instances of one deployment use among themselves (docs/deployment.md).

The relay (turnlog.relay): another instance follows the live streams that run here, all on
one batched connection:

* ``GET /internal/v1/relay/{session}``: the session's records, until either side closes it;
* ``POST /internal/v1/relay/{session}/messages`` ``{"messages": [mid, ...]}``: add them to
  the session; answers, in order, the snapshot (``turnlog.relay.Snapshot``) each one's
  relayed frames start after, or ``null`` for one that does not run here; 404 if the
  session is gone. (One request for every message a burst of subscribers asks for.)
* ``DELETE /internal/v1/relay/{session}/messages/{mid}``: stop relaying ``mid`` (its mirror
  has no readers any more).

The caller presents ``X-Turnlog-Internal``, derived from the deployment's JWT secret
(turnlog.cluster.internal_token); anything else is 404, so the routes reveal nothing to the
outside.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.response import Stream

from turnlog.cluster import INTERNAL_HEADER
from turnlog.errors import NotFound
from turnlog.http.common import Runtime, body, parse_id, runtime
from turnlog.relay import RelaySession
from turnlog.streams import StreamFinished


def _internal(request: Request[Any, Any, Any]) -> Runtime:
    rt = runtime(request)
    given = request.headers.get(INTERNAL_HEADER, "")
    if not hmac.compare_digest(given.encode(), rt.internal_token.encode()):
        raise NotFound("not found")
    return rt


def _session(rt: Runtime, session: str) -> RelaySession:
    found = rt.relays.get(parse_id(session, "relay session"))
    if found is None:
        raise NotFound(f"relay session {session} is not open here")
    return found


@get("/internal/v1/relay/{session:str}", include_in_schema=False)
async def relay_session(request: Request[Any, Any, Any], session: str) -> Stream:
    rt = _internal(request)
    opened = rt.relays.open(parse_id(session, "relay session"))
    records = rt.relays.serve(opened, rt.settings.heartbeat_s)
    return Stream(records, media_type="application/octet-stream")


class FollowRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The messages to add to a relay session."""

    messages: list[uuid.UUID]


@post("/internal/v1/relay/{session:str}/messages", status_code=200, include_in_schema=False)
async def relay_follow(request: Request[Any, Any, Any], session: str) -> Response[bytes]:
    rt = _internal(request)
    relay = _session(rt, session)
    wanted = (await body(request, FollowRequest)).messages
    answers: list[bytes] = []
    for mid in wanted:
        live = rt.registry.get(mid)
        try:
            answers.append(b"null" if live is None else relay.follow(live))
        except StreamFinished:
            answers.append(b"null")  # handed over: it goes on elsewhere
        except LookupError as exc:
            raise NotFound(str(exc)) from exc
    return Response(b"[" + b",".join(answers) + b"]", media_type="application/json")


@delete("/internal/v1/relay/{session:str}/messages/{mid:str}", include_in_schema=False)
async def relay_unfollow(request: Request[Any, Any, Any], session: str, mid: str) -> None:
    rt = _internal(request)
    relay = rt.relays.get(parse_id(session, "relay session"))
    if relay is not None:
        relay.unfollow(parse_id(mid, "message"))


ROUTES = [relay_session, relay_follow, relay_unfollow]

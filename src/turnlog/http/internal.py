"""Routes the instances of one deployment use among themselves (docs/deployment.md).

``GET /internal/v1/messages/{mid}/stream``: a message's live stream as this instance runs it
(the same frames ``/v1/messages/{mid}/stream`` sends), 404 if it does not run here. Another
instance opens one such upstream per message and fans it out to its own subscribers
(turnlog.follow). The caller presents ``X-Turnlog-Internal``, derived from the deployment's
JWT secret (turnlog.cluster.internal_token); anything else is 404, so the route reveals
nothing to the outside.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, get
from litestar.response import Stream

from turnlog.cluster import INTERNAL_HEADER
from turnlog.errors import NotFound
from turnlog.http.common import live_frames, parse_id, runtime, sse


@get("/internal/v1/messages/{mid:str}/stream", include_in_schema=False)
async def internal_stream(request: Request[Any, Any, Any], mid: str) -> Stream:
    rt = runtime(request)
    given = request.headers.get(INTERNAL_HEADER, "")
    if not hmac.compare_digest(given.encode(), rt.internal_token.encode()):
        raise NotFound("not found")
    live = rt.registry.get(parse_id(mid, "message"))
    if live is None:
        raise NotFound(f"message {mid} does not run on this instance")
    return sse(live_frames(live, rt.settings.heartbeat_s))


ROUTES = [internal_stream]

"""``GET /v1/models``: the models the caller may use (docs/providers.md)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from turnlog.http.common import json_response, runtime, user
from turnlog.http.openapi import api
from turnlog.providers import ADAPTERS, UnknownModel, adapter_for


def _capabilities(kind: str) -> dict[str, Any]:
    """What the adapter says it can do, and whether its SDK is installed here."""
    try:
        adapter = adapter_for(kind)
    except UnknownModel as exc:  # the SDK (or the adapter) is not installed
        return {"available": False, "detail": str(exc)}
    return {
        "available": True,
        **adapter.capabilities,
        "options": sorted(adapter.options.__struct_fields__),
    }


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    provider: str
    name: str
    kind: str
    capabilities: dict[str, Any]


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ModelInfo]


@get("/v1/models", opt=api("the models this user may use", {200: ModelList}))
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    settings = runtime(request).settings
    items = []
    capabilities: dict[str, dict[str, Any]] = {}
    for spec, name in settings.models.listing(owner, settings.default_model):
        if spec.kind not in capabilities:
            capabilities[spec.kind] = _capabilities(spec.kind) if spec.kind in ADAPTERS else {}
        found = capabilities[spec.kind]
        if spec.unavailable is not None and found.get("available"):
            # The SDK is here but this provider's key is not.
            found = {**found, "available": False, "detail": spec.unavailable}
        items.append(
            ModelInfo(
                id=f"{spec.name}:{name}",
                provider=spec.name,
                name=name,
                kind=spec.kind,
                capabilities=found,
            )
        )
    return json_response(ModelList(items=items))


ROUTES = [list_models]

"""The response cache (docs/operations.md): an identical request is answered from a
stored answer instead of the model.

- Off unless ``[cache]`` in ``TURNLOG_CONFIG`` names models (globs); ``ttl_s`` (default
  3600), ``scope`` (``user``, the default, or ``shared``), ``max_entries`` (10,000).
- The key is a SHA-256 over everything that shapes the answer: the model (``provider:name``),
  the system prompt, the whole history sent, the tools and the options, and the user (or
  nothing, with ``scope = "shared"``).
- Only a turn's first step is looked up or stored (the request ends with the user's
  message: not a step after tool results), never a regeneration (a new version of an answer
  asks for another one) nor a recovered turn's continuation (the engine passes no cache
  then), and only an answer that called no tool and ended normally is stored: a tool turn
  never is.
- A hit is served *as the provider's stream*: the stored events, then the step's end with
  ``usage.cache_hit: true``. The engine stores and streams them like any answer, so a hit's
  rows are ordinary rows, its events ordinary log events, and replay is exact.
- ``options.cache: false`` bypasses it (neither read nor written); ``cache`` is turnlog's
  option and never reaches a provider.
- Entries live in PostgreSQL (``response_cache``), so every instance shares them: expiry
  by ``expires_at`` on PostgreSQL's clock, and a size bound (the entries expiring last are
  kept) applied at each store.
- A cache failure (the table unreachable, an entry that does not decode) is logged and
  falls back to the model; it never fails a turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import structlog
from turnlog_reducer import StreamEvent, TextDelta, ToolCallStarted

from turnlog.log import events as ev
from turnlog.log.pool import BoundedPool
from turnlog.metrics import Metrics, provider_and_model
from turnlog.product.config import CacheConfig
from turnlog.providers.base import ModelRequest, Provider, StepEnd

log = structlog.get_logger("turnlog.cache")

OPTION = "cache"
# Finish reasons of an answer worth keeping (a provider's normal ends of a text answer).
_STORED_ENDS = frozenset({"stop", "end_turn", "STOP", "length", "max_tokens", "MAX_TOKENS"})

_events = msgspec.json.Decoder(tuple[StreamEvent, ...])
_usage = msgspec.json.Decoder(dict[str, Any])
_json = msgspec.json.Encoder()

_LOOKUP = (
    "SELECT events, finish_reason, usage, tokens FROM response_cache"
    " WHERE key = %s AND expires_at > now()"
)
# A live entry is never replaced: of two identical requests answered at once, the first to
# store keeps its entry (and the second writes nothing); an expired one is replaced.
# Expiry uses PostgreSQL's clock, the same for every instance.
_STORE = (
    "INSERT INTO response_cache (key, model, events, finish_reason, usage, tokens,"
    " created_at, expires_at) VALUES (%(key)s, %(model)s, %(events)s::jsonb,"
    " %(finish_reason)s, %(usage)s::jsonb, %(tokens)s, now(),"
    " now() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (key) DO UPDATE SET model = EXCLUDED.model, events = EXCLUDED.events,"
    " finish_reason = EXCLUDED.finish_reason, usage = EXCLUDED.usage,"
    " tokens = EXCLUDED.tokens, created_at = EXCLUDED.created_at,"
    " expires_at = EXCLUDED.expires_at WHERE response_cache.expires_at <= now()"
)
# Expired entries go, then all but the max_entries expiring last (newest first through
# response_cache_expires). Two trims at once delete overlapping sets: harmless.
_TRIM = (
    "DELETE FROM response_cache WHERE expires_at <= now() OR key IN ("
    " SELECT key FROM response_cache ORDER BY expires_at DESC OFFSET %(max)s)"
)


class Entry(msgspec.Struct, frozen=True):
    events: tuple[StreamEvent, ...]
    finish_reason: str
    usage: dict[str, Any] | None
    tokens: int


class ResponseCache:
    """Lookups and stores of answers in ``response_cache``."""

    def __init__(self, pool: BoundedPool, config: CacheConfig, metrics: Metrics) -> None:
        self.pool = pool
        self.config = config
        self.metrics = metrics

    def key(self, request: ModelRequest, *, owner: str, model: str) -> bytes:
        scope = owner if self.config.scope == "user" else ""
        material = _json.encode(
            [
                scope,
                model,
                request.system_prompt,
                request.messages,
                request.tools,
                sorted(request.options.items()),
            ]
        )
        return hashlib.sha256(material).digest()

    async def lookup(self, key: bytes) -> Entry | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_LOOKUP, (key,))
            row = await cur.fetchone()
        if row is None:
            return None
        events, finish_reason, usage, tokens = row
        return Entry(
            events=_events.decode(events),
            finish_reason=finish_reason or "stop",
            usage=None if usage is None else _usage.decode(usage),
            tokens=tokens,
        )

    async def store(self, key: bytes, model: str, events: list[StreamEvent], end: StepEnd) -> None:
        usage = end.usage or {}
        tokens = usage.get("output_tokens")
        if not isinstance(tokens, int):
            tokens = sum(1 for e in events if isinstance(e, TextDelta))
        params = {
            "key": key,
            "model": model,
            "events": _json.encode(ev.coalesce(events)).decode(),
            "finish_reason": end.finish_reason,
            "usage": None if end.usage is None else _json.encode(end.usage).decode(),
            "tokens": tokens,
            "ttl": self.config.ttl_s,
        }
        async with self.pool.connection() as conn:
            await conn.execute(_STORE, params)
            await conn.execute(_TRIM, {"max": self.config.max_entries})


def prepare(
    cache: ResponseCache | None,
    provider: Provider,
    request: ModelRequest,
    *,
    owner: str,
    model: str,
) -> tuple[ModelRequest, Provider]:
    """The request without turnlog's ``cache`` option, and the provider to ask: one that
    answers from the cache where it may (see the module docstring), else ``provider``."""
    wanted = request.options.get(OPTION, True) is not False
    if OPTION in request.options:
        options = {k: v for k, v in request.options.items() if k != OPTION}
        request = msgspec.structs.replace(request, options=options)
    if (
        cache is None
        or not wanted
        or not cache.config.caches(model)
        or not request.messages
        or request.messages[-1].role != "user"
    ):
        return request, provider
    return request, _Cached(cache, provider, cache.key(request, owner=owner, model=model), model)


class _Cached:
    """A provider that answers from the cache, or asks ``inner`` and stores the answer."""

    def __init__(self, cache: ResponseCache, inner: Provider, key: bytes, model: str) -> None:
        self.cache = cache
        self.inner = inner
        self.key = key
        self.model = model

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        metrics = self.cache.metrics
        labels = provider_and_model(self.model)
        entry = None
        try:
            entry = await self.cache.lookup(self.key)
        except Exception as exc:
            log.warning("cache lookup failed; asking the model", error=str(exc)[:300])
        if entry is not None:
            metrics.child(metrics.cache_hits, *labels).inc()
            metrics.child(metrics.cache_tokens_saved, *labels).inc(entry.tokens)
            for event in entry.events:
                yield event
            yield StepEnd(entry.finish_reason, usage={**(entry.usage or {}), "cache_hit": True})
            return
        metrics.child(metrics.cache_misses, *labels).inc()
        seen: list[StreamEvent] = []
        called_tool = False
        async for item in self.inner.stream(request):
            if isinstance(item, StepEnd):
                if not called_tool and item.finish_reason in _STORED_ENDS:
                    # Stored before the step's end is handed on: after it, the engine
                    # may stop reading this stream at once.
                    try:
                        await self.cache.store(self.key, self.model, seen, item)
                    except Exception as exc:
                        log.warning("cache store failed", error=str(exc)[:300])
            else:
                seen.append(item)
                called_tool = called_tool or isinstance(item, ToolCallStarted)
            yield item

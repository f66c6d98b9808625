"""The ``gemini`` provider: ``generate_content_stream`` through the official ``google-genai``.

What the stream maps to (one step = one ``streamGenerateContent?alt=sse`` request):

- text parts -> ``text_delta``; thought parts (``thought: true``) -> ``reasoning_delta``;
- a function call part (Gemini sends each call whole) -> ``tool_call_started``, one
  ``tool_call_delta`` holding its arguments as JSON, ``tool_call_ready``; a call without an
  ``id`` (the Gemini API usually gives none) gets one made here, ``SYNTHETIC_ID`` + a digest,
  which is never sent back to the API;
- ``thought_signature`` on any part -> ``signature`` on the block that part made or extended
  (the SDK holds it as bytes; a block keeps it base64-encoded, and it goes back as the same
  bytes on the same kind of part);
- ``usage_metadata`` -> usage (output counts the thoughts too, as ``reasoning_tokens``);
  ``finish_reason`` -> ``stop`` / ``length`` / ``content_filter``, and ``tool_calls`` when
  the step made calls (Gemini says ``STOP`` either way);
- HTTP errors and an ``{"error": …}`` chunk mid-stream -> ``ProviderError``, retryable for
  408, 429 and 5xx, waiting what ``Retry-After`` or the error's ``RetryInfo`` asks.

Quirks handled here:

- *A signature on an empty part.* Gemini may end a text answer with a part whose text is
  "" and which only carries the signature: it is set on the block before it, unless that
  block is signed already (then it is dropped and logged: such text signatures are not
  checked by the API).
- *History the API accepts.* Roles are ``user`` and ``model``; function results are
  ``function_response`` parts of a user turn, named after their call; consecutive same-role
  turns are merged (results first); reasoning goes back only when signed, as the thought
  part it was; redacted reasoning (another provider's) is not sent.

The SDK's own retries stay off (its default): the engine retries, once, for everyone. The
SDK client is shared by the steps (``_CLIENTS``), on an ``httpx2`` client with aiohttp
underneath (``_http.py``); each step closes its response when it ends or is cancelled, so
the API sees the disconnect at once.

The SDK builds and sends the request (its request conversion, URL, API version, key header
and status errors: ``_open_stream`` does what ``generate_content_stream`` does up to the
response) and the response's bytes are read here (``_sse.py``): each frame one ``msgspec``
decode into ``_Response``, which holds only the fields read below, instead of the SDK's
``json.loads``, ``json.dumps``, ``json.loads`` again and a pydantic model per chunk. The
request side uses SDK internals (``_GenerateContentParameters_to_mldev``,
``_build_request``, ``_async_request``): ``tests/providers/test_gemini.py`` pins them,
and ``pyproject.toml`` the SDK release range they were read from.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, cast

import httpx2
import msgspec
import structlog
from google import genai
from google.genai import _common as genai_common
from google.genai import errors as genai_errors
from google.genai import models as genai_models
from google.genai import types
from turnlog_reducer import (
    ReasoningBlock,
    ReasoningDelta,
    Signature,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

from turnlog import aio
from turnlog.config import Settings
from turnlog.models import ProviderSpec
from turnlog.providers._common import (
    TRANSPORT_ERRORS,
    PerLoop,
    host_of,
    read_backstop_s,
    redact,
    retry_after_value,
)
from turnlog.providers._http import AiohttpTransport, body_chunks
from turnlog.providers._sse import Skipper, SSEDecoder
from turnlog.providers._tls import tls_context
from turnlog.providers.base import (
    Adapter,
    ChatMessage,
    ModelRequest,
    ProviderError,
    StepEnd,
    continued_history,
    usage,
)

__all__ = [
    "ADAPTER",
    "SYNTHETIC_ID",
    "GeminiOptions",
    "GeminiProvider",
    "history_contents",
    "parse_gemini_options",
]

log = structlog.get_logger("turnlog.providers.gemini")

# Prefix of the tool-call ids made here for calls the API gave no id.
SYNTHETIC_ID: Final = "gemini_call_"

_FINISH: Final = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


class GeminiOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The options a ``gemini:`` model takes (all optional)."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stop_sequences: list[str] | None = None
    # Thinking: a token budget (-1: the model decides, 0: off) or a level, and whether the
    # model's thought summaries stream as reasoning (on by default once either is set).
    thinking_budget: Annotated[int, msgspec.Meta(ge=-1)] | None = None
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None
    include_thoughts: bool | None = None


def parse_gemini_options(options: Mapping[str, Any]) -> GeminiOptions:
    """``options`` as ``GeminiOptions``; a readable ``ValueError`` if they are not valid."""
    try:
        return msgspec.convert(dict(options), GeminiOptions)
    except (msgspec.ValidationError, TypeError, ValueError) as e:
        raise ValueError(f"invalid options for a gemini model: {e}") from None


class GeminiProvider:
    """Gemini through ``genai.Client(...).aio.models.generate_content_stream``."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        """One step of ``request``: its stream events, then one ``StepEnd``."""
        try:
            options = parse_gemini_options(request.options)
        except ValueError as e:
            raise ProviderError(str(e), retryable=False) from None
        config = generate_config(request, options)
        # A cut answer is continued by asking in a user turn (Gemini has no prefill).
        contents = history_contents(continued_history(request, prefill=False))
        client = _CLIENTS.get(
            (self.api_key, self.base_url, self.connect_timeout_s, self.read_timeout_s),
            self._client,
        )
        try:
            response = await _open_stream(client, request.model, contents, config)
            try:
                async for item in _translate(response, request):
                    yield item
            finally:
                # Shielded: on cancel the request must still be closed now, not at GC. A
                # response closed before its end closes its connection (never pooled), so
                # the API sees the disconnect at once.
                with aio.cancel_scope(shield=True):
                    await response.aclose()
        except genai_errors.APIError as e:
            raise self._error(e) from None
        except TRANSPORT_ERRORS as e:
            host = host_of(e, self.base_url, "https://generativelanguage.googleapis.com")
            text = redact(f"gemini: {type(e).__name__} ({host}): {e}", self.api_key)
            raise ProviderError(text, retryable=True) from None

    def _client(self) -> genai.Client:
        return genai.Client(
            # A placeholder key lets a keyless gateway work; the API itself answers 401/403.
            api_key=self.api_key or "missing-key",
            http_options=types.HttpOptions(
                base_url=self.base_url,
                # The SDK passes this to every request as its one timeout (milliseconds).
                timeout=int(self.read_timeout_s * 1000),
                # An httpx2 client with aiohttp underneath (``_http.py``); its read
                # timeout is "no bytes for this long" (a stall).
                httpx_async_client=httpx2.AsyncClient(
                    transport=AiohttpTransport(ssl_context=tls_context()),
                    timeout=httpx2.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
                ),
                # Given these, the client makes no TLS context (or sync client) of its own.
                httpx_client=_sync_client(),
                async_client_args={"ssl": tls_context()},
            ),
        )

    def _error(self, e: genai_errors.APIError) -> ProviderError:
        code = e.code if isinstance(e.code, int) else 0
        text = redact(
            f"gemini: {code} {e.status or ''}: {e.message or e}".replace("  ", " "), self.api_key
        )
        headers = getattr(e.response, "headers", None) or {}
        return ProviderError(
            text,
            retryable=code in (408, 429) or code >= 500,
            retry_after=_retry_after(headers, e.details),
        )


# One SDK client per endpoint (and event loop), its connections kept alive between steps:
# a client per step cost its setup and a new connection (a TLS handshake with the API).
_CLIENTS: PerLoop[genai.Client] = PerLoop()


@functools.cache
def _sync_client() -> httpx2.Client:
    """The synchronous client every ``genai.Client`` wants; turnlog never sends with it."""
    return httpx2.Client(verify=tls_context())


def _make(spec: ProviderSpec, settings: Settings) -> GeminiProvider:
    return GeminiProvider(
        api_key=spec.api_key,
        base_url=spec.base_url,
        connect_timeout_s=settings.provider_connect_timeout_s,
        read_timeout_s=read_backstop_s(settings),
    )


ADAPTER = Adapter(
    make=_make,
    options=GeminiOptions,
    capabilities={"tools": True, "reasoning": True, "signatures": True},
)


def _retry_after(headers: Mapping[str, str], details: Any) -> float | None:
    """Seconds from ``Retry-After`` (seconds or an HTTP date), else from the error body's
    ``google.rpc.RetryInfo`` ``retryDelay`` ("7s", "0.5s"). The API's body is always a
    ``google.rpc.Status`` object; a gateway in front of it may send any JSON (``{"error":
    "text"}``), which then just has no wait to read."""
    seconds = retry_after_value(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    error = details.get("error") if isinstance(details, dict) else None
    found = error.get("details") if isinstance(error, dict) else None
    for detail in found if isinstance(found, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


# -- the stream ------------------------------------------------------------------------------


async def _open_stream(
    client: genai.Client,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> httpx2.Response:
    """The SDK's ``generate_content_stream`` up to the response, which is returned unread
    (what ``AsyncModels._generate_content_stream`` does before it parses; Gemini API only,
    not Vertex AI): the SDK's own request conversion, URL, headers and status errors."""
    api = client.aio.models._api_client
    parameters = types._GenerateContentParameters(model=model, contents=contents, config=config)
    body = genai_models._GenerateContentParameters_to_mldev(api, parameters, None, parameters)
    url = body.get("_url")
    path = "{model}:streamGenerateContent?alt=sse".format_map(url) if url else ""
    body.pop("config", None)
    body = genai_common.encode_unserializable_types(genai_common.convert_to_dict(body))
    http_request = api._build_request("post", path, body, None)
    response = await api._async_request(http_request=http_request, stream=True)
    return cast("httpx2.Response", response.response_stream)


# The fields of a chunk (a ``GenerateContentResponse`` in the REST JSON) read below, and no
# others: msgspec skips the rest without building them.


class _FunctionCall(msgspec.Struct):
    id: str | None = None
    name: str | None = None
    args: dict[str, Any] | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None  # base64
    function_call: _FunctionCall | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] | None = None


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    cached_content_token_count: int | None = None


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] | None = None
    # Every chunk carries the running totals and only the last counts: kept as its bytes
    # (no decode per chunk), decoded once at the end.
    usage_metadata: msgspec.Raw = msgspec.Raw()
    prompt_feedback: _PromptFeedback | None = None
    response_id: str | None = None
    error: Any = None  # an error object sent inside the stream


_decode_response = msgspec.json.Decoder(_Response).decode


_decode_usage = msgspec.json.Decoder(_UsageMetadata | None).decode


class _Reader:
    """The response's frames as chunks; an ``{"error": …}`` one raised as the SDK raises
    it; a chunk of another shape logged once and skipped."""

    __slots__ = ("decoder", "error", "other", "response", "skipper")

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.decoder = SSEDecoder(keep_other=True)
        self.other = self.decoder.other or []
        self.skipper = Skipper(log, "gemini")
        self.error: genai_errors.APIError | None = None  # raised after the chunks before it

    def chunks(self, raw: bytes | None) -> list[_Response]:
        """The chunks ``raw`` completes (``None``: the body ended)."""
        frames = self.decoder.feed(raw) if raw is not None else self.decoder.flush()
        datas = [data for _, data in frames]
        other = self.other
        if other:
            # An error sent as bare JSON lines (no `data:`): complete once it parses.
            try:
                msgspec.json.decode(b"".join(other))
            except msgspec.DecodeError:
                pass
            else:
                datas.append(b"".join(other))
                other.clear()
        out = []
        for data in datas:
            try:
                chunk = _decode_response(data)
            except msgspec.ValidationError as e:
                self.skipper.skip(data, e)
                continue
            if chunk.error is not None:
                self.error = _api_error(chunk.error, data, self.response)
                break
            out.append(chunk)
        return out


def _api_error(error: Any, data: bytes, response: httpx2.Response) -> genai_errors.APIError:
    body = msgspec.json.decode(data)
    code = error.get("code") if isinstance(error, dict) else None
    return genai_errors.APIError(code if isinstance(code, int) else 0, body, response)


class _State(msgspec.Struct):
    """What the stream made so far: whether there is a last block and if it is signed."""

    has_block: bool = False
    last_signed: bool = False
    calls: int = 0


async def _translate(
    response: httpx2.Response, request: ModelRequest
) -> AsyncIterator[StreamEvent | StepEnd]:
    state = _State()
    finish: str | None = None
    reported = msgspec.Raw()
    reader = _Reader(response)
    body = body_chunks(response)
    while True:
        # One loop for the body's reads and, at its end (None), the decoder's last frame.
        raw: bytes | None
        try:
            raw = await anext(body)
        except StopAsyncIteration:
            raw = None
        for chunk in reader.chunks(raw):
            if chunk.usage_metadata:
                reported = chunk.usage_metadata  # each chunk's counts are the totals so far
            if not chunk.candidates:
                blocked = chunk.prompt_feedback.block_reason if chunk.prompt_feedback else None
                if blocked:
                    finish = "content_filter"
                continue
            candidate = chunk.candidates[0]
            parts = candidate.content.parts if candidate.content else None
            for part in parts or ():
                if part.function_call is None and not part.thought_signature:
                    # The common case (a text or thought part) without a list per part.
                    if part.text:
                        yield ReasoningDelta(part.text) if part.thought else TextDelta(part.text)
                        state.has_block = True
                        state.last_signed = False
                    continue
                for event in _part_events(part, state, chunk.response_id, request):
                    yield event
            if candidate.finish_reason is not None:
                name = candidate.finish_reason
                finish = _FINISH.get(name, name.lower())
        if reader.error is not None:
            raise reader.error
        if raw is None:
            break
    if finish is None:
        raise ProviderError("gemini: the stream ended without a finish reason", retryable=True)
    if finish == "stop" and state.calls:
        finish = "tool_calls"
    yield StepEnd(finish, usage=_usage(_last_usage(reported)))


def _part_events(
    part: _Part, state: _State, response_id: str | None, request: ModelRequest
) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    call = part.function_call
    if call is not None and call.name:
        call_id = call.id or _synthetic_id(request, response_id, state.calls, call.name)
        arguments = call.args or {}
        events += [
            ToolCallStarted(call_id, call.name),
            ToolCallDelta(call_id, json.dumps(arguments, ensure_ascii=False)),
            ToolCallReady(call_id, arguments),
        ]
        state.calls += 1
    elif part.text:
        events.append(ReasoningDelta(part.text) if part.thought else TextDelta(part.text))
    if events:
        # A new call always makes a block; a delta extends the last unsigned one of its
        # kind or starts one; either way the part's content is now the last block.
        state.has_block = True
        state.last_signed = False
    if part.thought_signature:
        signature = _normalized_signature(part.thought_signature)
        if state.has_block and not state.last_signed:
            events.append(Signature(signature))
            state.last_signed = True
        else:
            log.info("gemini signature without a block to carry it dropped")
    return events


def _synthetic_id(request: ModelRequest, response_id: str | None, n: int, name: str) -> str:
    """An id for the ``n``-th call of a step: stable for the same response, unique enough
    to never meet another call of the conversation."""
    seed = response_id or uuid.uuid4().hex
    digest = hashlib.sha256(f"{request.model}:{seed}:{n}:{name}".encode()).hexdigest()
    return f"{SYNTHETIC_ID}{digest[:16]}"


def _normalized_signature(wire: str) -> str:
    """A signature as the block keeps it: standard base64 of its bytes (the API may send
    the URL-safe alphabet or leave out the padding, which the SDK's bytes field accepted)."""
    text = wire.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return wire
    return base64.b64encode(raw).decode()


def _last_usage(raw: msgspec.Raw) -> _UsageMetadata | None:
    if not raw:
        return None
    try:
        return _decode_usage(raw)
    except msgspec.ValidationError as e:
        log.warning("gemini usage of an unexpected shape ignored", error=str(e))
        return None


def _usage(reported: _UsageMetadata | None) -> dict[str, int] | None:
    if reported is None:
        return None
    thoughts = reported.thoughts_token_count
    return usage(
        reported.prompt_token_count,
        (reported.candidates_token_count or 0) + (thoughts or 0),
        cached_tokens=reported.cached_content_token_count,
        reasoning_tokens=thoughts,
    )


# -- the request -----------------------------------------------------------------------------


def generate_config(request: ModelRequest, options: GeminiOptions) -> types.GenerateContentConfig:
    """The ``GenerateContentConfig`` of ``request``: system instruction, tools, options."""
    config = types.GenerateContentConfig(
        system_instruction=request.system_prompt or None,
        max_output_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        stop_sequences=options.stop_sequences,
        # The engine runs tools; the SDK must never call anything itself.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    if request.tools:
        config.tools = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=t.name, description=t.description, parameters_json_schema=t.parameters
                    )
                    for t in request.tools
                ]
            )
        ]
    thinking = (options.thinking_budget, options.thinking_level, options.include_thoughts)
    if any(x is not None for x in thinking):
        config.thinking_config = types.ThinkingConfig(
            thinking_budget=options.thinking_budget,
            thinking_level=types.ThinkingLevel(options.thinking_level.upper())
            if options.thinking_level
            else None,
            include_thoughts=options.include_thoughts is not False,
        )
    return config


def history_contents(messages: Sequence[ChatMessage]) -> list[types.Content]:
    """The history as ``contents``: ``user``/``model`` turns, results as function responses,
    signatures back on their parts."""
    names = {b.id: b.name for m in messages for b in m.blocks if isinstance(b, ToolCallBlock)}
    out: list[types.Content] = []
    for m in messages:
        role, parts = _turn(m, names)
        if not parts:
            continue
        if out and out[-1].role == role:
            # Merge same-role turns (parallel calls' results, a result then a question).
            out[-1].parts = [*(out[-1].parts or ()), *parts]
        else:
            out.append(types.Content(role=role, parts=parts))
    return out


def _turn(m: ChatMessage, names: Mapping[str, str]) -> tuple[str, list[types.Part]]:
    match m.role:
        case "user":
            return "user", [types.Part(text=m.content)] if m.content else []
        case "tool":
            call_id = m.tool_call_id or ""
            response = types.FunctionResponse(
                id=_api_id(call_id),
                name=m.tool_name or names.get(call_id, "tool"),
                response={"result": m.content},
            )
            return "user", [types.Part(function_response=response)]
        case _:
            return "model", [p for b in m.blocks if (p := _part(b)) is not None]


def _part(block: TextBlock | ReasoningBlock | ToolCallBlock) -> types.Part | None:
    signature = _signature_bytes(block.signature)
    match block:
        case TextBlock(text=text):
            if not text and signature is None:
                return None
            return types.Part(text=text, thought_signature=signature)
        case ReasoningBlock(redacted=True):
            return None  # another provider's encrypted reasoning
        case ReasoningBlock(text=text):
            if signature is None:
                return None  # unsigned reasoning is not needed (nor another provider's)
            return types.Part(text=text, thought=True, thought_signature=signature)
        case ToolCallBlock(id=call_id, name=name, arguments=arguments):
            call = types.FunctionCall(
                id=_api_id(call_id),
                name=name,
                args=arguments if isinstance(arguments, dict) else {},
            )
            return types.Part(function_call=call, thought_signature=signature)
    return None


def _api_id(call_id: str) -> str | None:
    """The id to send back: the API's own, never one made here."""
    return None if not call_id or call_id.startswith(SYNTHETIC_ID) else call_id


def _signature_bytes(signature: object) -> bytes | None:
    """A stored signature as the bytes the SDK wants; None if absent or not ours (base64)."""
    if not isinstance(signature, str) or not signature:
        return None
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None

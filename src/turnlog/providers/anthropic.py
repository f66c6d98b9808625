"""The ``anthropic`` provider: the Messages API, streamed through the official SDK.

What the stream maps to (one step = one ``messages.create(stream=True)``):

- ``text`` blocks -> ``text_delta``;
- ``thinking`` blocks -> ``reasoning_delta``; the block's ``signature_delta`` -> one
  ``signature`` event when the block stops (so it lands on that reasoning block);
- ``redacted_thinking`` -> ``reasoning_redacted`` with its encrypted ``data``;
- ``tool_use`` -> ``tool_call_started``, its ``input_json_delta`` fragments ->
  ``tool_call_delta``, and at the block's stop ``tool_call_ready`` with the parsed input;
- ``message_start`` / ``message_delta`` usage -> the step's usage; ``stop_reason`` -> its
  finish reason (``end_turn`` -> ``stop``, ``max_tokens`` -> ``length``, ``tool_use`` ->
  ``tool_calls``);
- an ``error`` event mid-stream (``overloaded_error`` included) and HTTP errors ->
  ``ProviderError``, retryable for 429, 5xx, overloaded, timeouts and connection errors.

Quirks handled here:

- *Omitted thinking.* Some models return thinking with ``display: "omitted"``: a thinking
  block with no text, only a signature. A signature needs a block to land on, and an empty
  reasoning delta makes none, so such a block is stored as redacted reasoning whose data is
  ``OMITTED_THINKING`` + the signature (base64 never holds ``:``, so the prefix cannot clash
  with real redacted data) and is sent back as the empty, signed thinking block it was.
- *History the API accepts.* Consecutive same-role messages are merged (a tool result and
  the next user text become one user message, results first); reasoning without a signature
  (from another provider or the demo) is not sent, as the API would reject it; empty text
  blocks are dropped.

The SDK's own retries are off (``max_retries=0``): the engine retries, once, for everyone.

The SDK sends the request (``client.post``, its raw request: its auth, base URL, headers
and status errors); the response's bytes are read here (``_sse.py``), each frame one
``msgspec`` decode into ``_Event``, which holds only the fields read below, instead of the
SDK's pydantic event per frame. A frame of another shape is logged once and skipped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any, Final, Literal

import anthropic
import msgspec
import structlog
from turnlog_reducer import (
    ReasoningBlock,
    ReasoningDelta,
    ReasoningRedacted,
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
    response_type,
    retry_after,
    sdk_http_client,
)
from turnlog.providers._http import body_chunks
from turnlog.providers._sse import Skipper, SSEDecoder
from turnlog.providers.base import (
    Adapter,
    ChatMessage,
    ModelRequest,
    ProviderError,
    StepEnd,
    ToolSpec,
    continued_history,
    usage,
)

__all__ = [
    "ADAPTER",
    "OMITTED_THINKING",
    "AnthropicOptions",
    "AnthropicProvider",
    "history_messages",
    "parse_anthropic_options",
]

log = structlog.get_logger("turnlog.providers.anthropic")

_RESPONSE = response_type(anthropic.DefaultAsyncHttpxClient)
_encode = msgspec.json.Encoder().encode

# Prefix of a redacted reasoning block that stands for an omitted (empty, signed) thinking block.
OMITTED_THINKING: Final = "thinking:"

_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Error types (the body's error.type, also sent as an `error` event mid-stream) worth retrying.
_RETRYABLE_TYPES: Final = {"overloaded_error", "rate_limit_error", "api_error", "timeout_error"}


class AnthropicOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The options an ``anthropic:`` model takes (all optional)."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 8192
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stop_sequences: list[str] | None = None
    # Extended thinking with this budget (at least 1024 tokens, less than max_tokens), or
    # adaptive thinking (the model decides; newer models); which a model takes is its own.
    thinking_budget: Annotated[int, msgspec.Meta(ge=1024)] | None = None
    adaptive_thinking: bool = False
    # How thinking comes back; left out, the model's default (which may be "omitted").
    thinking_display: Literal["summarized", "omitted"] | None = None

    def __post_init__(self) -> None:
        if self.thinking_budget is not None and self.thinking_budget >= self.max_tokens:
            raise ValueError(
                f"thinking_budget ({self.thinking_budget}) must be less than"
                f" max_tokens ({self.max_tokens})"
            )
        if self.thinking_budget is not None and self.adaptive_thinking:
            raise ValueError("give thinking_budget or adaptive_thinking, not both")


def parse_anthropic_options(options: Mapping[str, Any]) -> AnthropicOptions:
    """``options`` as ``AnthropicOptions``; a readable ``ValueError`` if they are not valid."""
    try:
        return msgspec.convert(dict(options), AnthropicOptions)
    except (msgspec.ValidationError, TypeError, ValueError) as e:
        raise ValueError(f"invalid options for an anthropic model: {e}") from None


class AnthropicProvider:
    """Claude through ``anthropic.AsyncAnthropic``. Its SDK client is shared by the steps
    (``_CLIENTS``); each step closes its own response at its end, cancelled or not."""

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
        # A read timeout is "no bytes for this long": a backstop that ends a stalled stream.
        self.timeout = anthropic.Timeout(read_timeout_s, connect=connect_timeout_s)

    def _client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            # A placeholder key lets a keyless gateway work; the API itself answers 401.
            api_key=self.api_key or "missing-key",
            base_url=self.base_url,
            max_retries=0,
            timeout=self.timeout,
            # aiohttp under the SDK's client (``_http.py``), with the one shared TLS context.
            http_client=sdk_http_client(anthropic.DefaultAsyncHttpxClient, self.timeout),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        """One step of ``request``: its stream events, then one ``StepEnd``."""
        try:
            options = parse_anthropic_options(request.options)
        except ValueError as e:
            raise ProviderError(str(e), retryable=False) from None
        params = request_params(request, options)
        client = _CLIENTS.get(
            (self.base_url, self.api_key, self.timeout.connect, self.timeout.read), self._client
        )
        try:
            # The SDK's raw request: its own ``create`` would first walk the whole
            # history through its TypedDict transform (1-3 ms of CPU per step).
            http: Any = await client.post(
                "/v1/messages",
                cast_to=_RESPONSE,
                # Encoded here (the SDK sends its `content` as it is): msgspec, not the SDK's
                # json.dumps (about 10x the CPU on a long history).
                content=_encode({**params, "stream": True}),
                stream=True,
                stream_cls=anthropic.AsyncStream[Any],  # not used for a raw response
            )
            c = request.continuation
            trimmed = c is not None and prefills(options) and c.text != c.text.rstrip()
            items = _translate(body_chunks(http))
            if trimmed:
                items = _after_prefill(items, trimmed)
            try:
                async for item in items:
                    if isinstance(item, _ErrorFrame):
                        raise self._status_error(200, item.body, item.text, http.headers)
                    yield item
            finally:
                # Shielded: on cancel the request must still be closed now, not at GC. A
                # response closed before its end closes its connection (never pooled), so
                # the API sees the disconnect and stops generating.
                with aio.cancel_scope(shield=True):
                    await http.aclose()
        except anthropic.APIError as e:
            raise self._error(e) from None
        except TRANSPORT_ERRORS as e:
            # Raised while reading the stream (a read timeout is a stall).
            host = host_of(e, self.base_url, "https://api.anthropic.com")
            text = redact(f"anthropic: {type(e).__name__} ({host}): {e}", self.api_key)
            raise ProviderError(text, retryable=True) from None

    def _error(self, e: anthropic.APIError) -> ProviderError:
        if isinstance(e, anthropic.APIStatusError):
            return self._status_error(e.status_code, e.body, e.message, e.response.headers)
        # Connection errors and timeouts (APIConnectionError, APITimeoutError), naming
        # the server they were about.
        text = f"anthropic: {e.message}"
        host = host_of(e, self.base_url, "https://api.anthropic.com")
        if host not in text:
            text += f" ({host})"
        return ProviderError(
            redact(text, self.api_key),
            retryable=isinstance(e, anthropic.APIConnectionError),
        )

    def _status_error(
        self, status: int, body: object, message: str, headers: Mapping[str, str]
    ) -> ProviderError:
        # The body's error.type and error.message (read from the body: older SDK releases
        # have no attributes for them); an `error` event mid-stream comes with the
        # stream's status, 200.
        error = body.get("error") if isinstance(body, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        where = "mid-stream" if status == 200 else f"HTTP {status}"
        text = f"anthropic: {where} {kind or 'error'}: {detail or message}"
        retryable = status in (408, 409, 429) or status >= 500
        return ProviderError(
            redact(text, self.api_key),
            retryable=retryable or kind in _RETRYABLE_TYPES,
            retry_after=retry_after(headers),
        )


# One SDK client per endpoint (and event loop), its connections kept alive between steps
# (a client per step cost a new connection, a TLS handshake with the real API, and the
# client's setup).
_CLIENTS: PerLoop[anthropic.AsyncAnthropic] = PerLoop()


def _make(spec: ProviderSpec, settings: Settings) -> AnthropicProvider:
    return AnthropicProvider(
        api_key=spec.api_key,
        base_url=spec.base_url,
        connect_timeout_s=settings.provider_connect_timeout_s,
        read_timeout_s=read_backstop_s(settings),
    )


ADAPTER = Adapter(
    make=_make,
    options=AnthropicOptions,
    capabilities={"tools": True, "reasoning": True, "signatures": True},
)


# -- the stream ------------------------------------------------------------------------------


# One Struct for every event of the stream, with only the fields read below (msgspec skips
# the rest without building them); ``type`` says which are there.


class _Details(msgspec.Struct):
    thinking_tokens: int | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    output_tokens_details: _Details | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Block(msgspec.Struct):
    """A ``content_block_start``'s block."""

    type: str
    text: str = ""
    thinking: str = ""
    signature: str | None = None
    data: str = ""
    id: str = ""
    name: str = ""


class _Delta(msgspec.Struct):
    """A ``content_block_delta``'s delta, or a ``message_delta``'s."""

    type: str = ""
    text: str = ""
    thinking: str = ""
    signature: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class _ErrorFrame(msgspec.Struct):
    """An ``error`` event: its body (JSON if it was) and its text."""

    body: object
    text: str


def _error_frame(data: bytes) -> _ErrorFrame:
    try:
        body: object = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return _ErrorFrame(data.decode("utf-8", "replace"), data.decode("utf-8", "replace"))
    return _ErrorFrame(body, f"{body}")


class _Open(msgspec.Struct):
    """The content block being streamed (the Messages API streams one at a time)."""

    kind: str
    tool_id: str = ""
    text: str = ""  # the tool input's JSON so far
    has_text: bool = False  # whether a thinking block has had any text
    signature: str = ""


async def _translate(
    body: AsyncIterator[bytes],
) -> AsyncIterator[StreamEvent | StepEnd | _ErrorFrame]:
    """The body's events as reducer events and one ``StepEnd`` (an ``error`` event is
    passed on for the provider to raise); ``ping`` and frames without an event name
    skipped, as the SDK skips them."""
    reported: dict[str, int] = {}
    finish = "stop"
    blocks: dict[int, _Open] = {}
    decoder = SSEDecoder()
    skipper = Skipper(log, "anthropic")
    while True:
        raw: bytes | None
        try:
            raw = await anext(body)
        except StopAsyncIteration:
            raw = None  # the body ended: the decoder's last frame
        for name, data in decoder.feed(raw) if raw is not None else decoder.flush():
            if name == "ping" or not name:
                continue
            if name == "error":
                yield _error_frame(data)
                return
            try:
                event = _decode_event(data)
            except msgspec.ValidationError as e:
                skipper.skip(data, e)
                continue
            match event.type:
                case "content_block_delta":
                    opened = blocks.get(event.index)
                    delta = event.delta
                    if opened is None or delta is None:
                        continue
                    match delta.type:
                        case "text_delta":
                            yield TextDelta(delta.text)
                        case "thinking_delta":
                            opened.has_text = opened.has_text or bool(delta.thinking)
                            yield ReasoningDelta(delta.thinking)
                        case "signature_delta":
                            opened.signature += delta.signature
                        case "input_json_delta" if delta.partial_json:
                            opened.text += delta.partial_json
                            yield ToolCallDelta(opened.tool_id, delta.partial_json)
                        case _:
                            pass
                case "message_start":
                    if event.message is not None:
                        _add_usage(reported, event.message.usage)
                case "content_block_start":
                    block = event.content_block
                    if block is None:
                        continue
                    match block.type:
                        case "text":
                            blocks[event.index] = _Open("text")
                            if block.text:
                                yield TextDelta(block.text)
                        case "thinking":
                            blocks[event.index] = _Open("thinking", signature=block.signature or "")
                            if block.thinking:
                                blocks[event.index].has_text = True
                                yield ReasoningDelta(block.thinking)
                        case "redacted_thinking":
                            yield ReasoningRedacted(block.data)
                        case "tool_use":
                            blocks[event.index] = _Open("tool_use", tool_id=block.id)
                            yield ToolCallStarted(block.id, block.name)
                        case other:
                            log.info("anthropic block type ignored", block_type=other)
                case "content_block_stop":
                    opened = blocks.pop(event.index, None)
                    if opened is not None:
                        for item in _close_block(opened):
                            yield item
                case "message_delta":
                    _add_usage(reported, event.usage)
                    if event.delta is not None and event.delta.stop_reason is not None:
                        reason = event.delta.stop_reason
                        finish = _FINISH.get(reason, reason)
                case "message_stop":
                    yield StepEnd(finish, usage=_usage(reported))
                    return
                case _:
                    pass
        if raw is None:
            break
    raise ProviderError("anthropic: the stream ended before message_stop", retryable=True)


def _close_block(opened: _Open) -> list[StreamEvent]:
    match opened.kind:
        case "thinking" if opened.signature and opened.has_text:
            return [Signature(opened.signature)]
        case "thinking" if opened.signature:
            return [ReasoningRedacted(OMITTED_THINKING + opened.signature)]
        case "tool_use":
            try:
                arguments = json.loads(opened.text) if opened.text.strip() else {}
            except ValueError:
                raise ProviderError(
                    f"anthropic: tool call {opened.tool_id} has arguments that are not JSON",
                    retryable=False,
                ) from None
            return [ToolCallReady(opened.tool_id, arguments)]
        case _:
            return []


def _add_usage(into: dict[str, int], reported: _Usage | None) -> None:
    """Merge ``message_start``'s or ``message_delta``'s usage (both are cumulative)."""
    if reported is None:
        return
    if reported.input_tokens is not None:
        into["input_tokens"] = reported.input_tokens
    if reported.output_tokens is not None:
        into["output_tokens"] = reported.output_tokens
    if reported.cache_read_input_tokens is not None:
        into["cache_read_input_tokens"] = reported.cache_read_input_tokens
    if reported.cache_creation_input_tokens is not None:
        into["cache_creation_input_tokens"] = reported.cache_creation_input_tokens
    details = reported.output_tokens_details
    if details is not None and details.thinking_tokens is not None:
        into["thinking_tokens"] = details.thinking_tokens


def _usage(reported: dict[str, int]) -> dict[str, int] | None:
    """The one usage shape: input counts every prompt token (cache reads and writes too,
    which the API counts apart)."""
    if not reported:
        return None
    cached = reported.get("cache_read_input_tokens")
    return usage(
        reported.get("input_tokens", 0)
        + (cached or 0)
        + reported.get("cache_creation_input_tokens", 0),
        reported.get("output_tokens"),
        cached_tokens=cached,
        reasoning_tokens=reported.get("thinking_tokens"),
    )


# -- the request -----------------------------------------------------------------------------


def request_params(request: ModelRequest, options: AnthropicOptions) -> dict[str, Any]:
    """The keyword arguments of ``messages.create`` for ``request``."""
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": options.max_tokens,
        "messages": history_messages(continued_history(request, prefill=prefills(options))),
    }
    if prefills(options) and request.continuation is not None:
        _trim_prefill(params["messages"])
    if request.system_prompt:
        params["system"] = request.system_prompt
    if request.tools:
        params["tools"] = [_tool(t) for t in request.tools]
    for name in ("temperature", "top_p", "top_k", "stop_sequences"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    thinking: dict[str, Any] | None = None
    if options.thinking_budget is not None:
        thinking = {"type": "enabled", "budget_tokens": options.thinking_budget}
    elif options.adaptive_thinking:
        thinking = {"type": "adaptive"}
    if thinking is not None and options.thinking_display is not None:
        thinking["display"] = options.thinking_display
    if thinking is not None:
        params["thinking"] = thinking
    return params


def _tool(spec: ToolSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description, "input_schema": spec.parameters}


def prefills(options: AnthropicOptions) -> bool:
    """Whether a cut answer is continued as a prefilled assistant turn (the model extends
    it). Extended thinking forbids a prefill: then it is asked to go on in a user turn."""
    return options.thinking_budget is None and not options.adaptive_thinking


def _trim_prefill(messages: list[dict[str, Any]]) -> None:
    """The API refuses a final assistant turn ending in whitespace: trim it (the stream
    then drops the whitespace the model starts with, see ``_after_prefill``)."""
    if not messages or messages[-1]["role"] != "assistant":
        return
    content = messages[-1]["content"]
    while content and content[-1]["type"] == "text":
        content[-1] = {**content[-1], "text": content[-1]["text"].rstrip()}
        if content[-1]["text"]:
            return
        content.pop()
    if not content:
        messages.pop()


async def _after_prefill(
    items: AsyncIterator[StreamEvent | StepEnd | _ErrorFrame], trimmed: bool
) -> AsyncIterator[StreamEvent | StepEnd | _ErrorFrame]:
    """A continued answer whose stored text ended in whitespace (trimmed from the prefill):
    the model's own leading whitespace would double it, so it is dropped."""
    async for item in items:
        if trimmed and isinstance(item, TextDelta):
            text = item.text.lstrip()
            if not text:
                continue
            trimmed = False
            item = TextDelta(text)
        yield item


def history_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The history as Messages API ``messages``: roles alternate, tool results are user
    content, thinking goes back signed."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = _message(m)
        if not content:
            continue
        if out and out[-1]["role"] == role:
            # The API wants alternating roles: two user turns in a row (a tool result, then
            # the next question; or a question whose answer failed) become one.
            out[-1]["content"].extend(content)
        else:
            out.append({"role": role, "content": content})
    return out


def _message(m: ChatMessage) -> tuple[str, list[dict[str, Any]]]:
    match m.role:
        case "user":
            return "user", [{"type": "text", "text": m.content}] if m.content else []
        case "tool":
            return "user", [
                {"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content}
            ]
        case _:
            return "assistant", [c for b in m.blocks if (c := _content(b)) is not None]


def _content(block: TextBlock | ReasoningBlock | ToolCallBlock) -> dict[str, Any] | None:
    match block:
        case TextBlock(text=text):
            return {"type": "text", "text": text} if text else None
        case ReasoningBlock(redacted=True, signature=str(data)):
            if data.startswith(OMITTED_THINKING):
                signature = data.removeprefix(OMITTED_THINKING)
                return {"type": "thinking", "thinking": "", "signature": signature}
            return {"type": "redacted_thinking", "data": data}
        case ReasoningBlock(text=text, signature=str(signature)):
            return {"type": "thinking", "thinking": text, "signature": signature}
        case ReasoningBlock():
            return None  # unsigned reasoning (another provider's): the API would refuse it
        case ToolCallBlock(id=call_id, name=name, arguments=arguments):
            return {
                "type": "tool_use",
                "id": call_id,
                "name": name,
                "input": arguments if isinstance(arguments, dict) else {},
            }
    return None

"""The ``openai`` provider: Chat Completions streaming through the official ``openai`` SDK.

It speaks to OpenAI and to every server that copies its API (vLLM, Ollama, llama.cpp's
server, LM Studio, OpenRouter, …; ``base_url`` points it there). It only translates: the
request from our history, the chunks into stream events, the SDK's errors into
``ProviderError``. Retries, timeouts and history rules are the engine's; the SDK's own
retries are off (``max_retries=0``).

Quirks of real servers, each handled in ``_Assembler`` and pinned by a replayed transcript
in ``tests/providers/test_openai.py``:

- reasoning arrives as ``delta.reasoning`` (vLLM ≥ 0.9, OpenRouter, Ollama) or
  ``delta.reasoning_content`` (DeepSeek, older vLLM, llama.cpp);
- ``finish_reason`` is ``"stop"`` although tool calls were streamed (llama.cpp, some vLLM
  tool parsers): a step with tool calls ends ``"tool_calls"``;
- a tool-call fragment without ``index``, or every parallel call under ``index`` 0: a new
  ``id`` starts a new call, a fragment without one continues the call its index (else the
  last call) names;
- ``arguments`` sent as a JSON object instead of a string (some Ollama versions);
- the ``id`` and ``name`` only on a call's first fragment (everyone);
- no usage chunk although ``stream_options.include_usage`` was asked (older servers): the
  row's usage stays null.

The SDK sends the request (``client.post``, its raw request: its auth, base URL, headers
and status errors) and the response's bytes are read here, not through the SDK's per-chunk
pydantic objects (``_sse.py``): each ``data:`` frame is one ``msgspec`` decode into
``_Chunk``, which holds only the fields read below. A frame of another shape is logged once
and skipped; one that is not JSON fails the step.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
import openai
import structlog
from turnlog_reducer import (
    Block,
    ReasoningDelta,
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
    TIMEOUT_ERRORS,
    TRANSPORT_ERRORS,
    PerLoop,
    host_of,
    read_backstop_s,
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

__all__ = ["ADAPTER", "OpenAIOptions", "OpenAIProvider", "to_messages"]

log = structlog.get_logger("turnlog.providers.openai")

_RESPONSE = response_type(openai.DefaultAsyncHttpxClient)


class OpenAIOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The options passed to Chat Completions (``None``: the server's default)."""

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None


class OpenAIProvider:
    """One configured OpenAI-compatible endpoint. Its SDK client is shared by the steps
    (``_CLIENTS``); each step closes its own response at its end, cancelled or not."""

    def __init__(self, spec: ProviderSpec, settings: Settings) -> None:
        self.spec = spec
        read = read_backstop_s(settings)
        self.timeout = openai.Timeout(read, connect=settings.provider_connect_timeout_s, read=read)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        try:
            options = msgspec.convert(request.options, OpenAIOptions)
        except msgspec.ValidationError as exc:
            raise ProviderError(f"invalid options for openai: {exc}", retryable=False) from None
        client = _CLIENTS.get(
            (self.spec.base_url, self.spec.api_key, self.timeout.connect, self.timeout.read),
            self._client,
        )
        try:
            params: dict[str, Any] = {
                "model": request.model,
                "messages": to_messages(
                    request.system_prompt,
                    continued_history(request, prefill=self.spec.continuation == "prefill"),
                ),
                "stream": True,
                "stream_options": {"include_usage": True},
                **msgspec.to_builtins(options),
            }
            if request.tools:
                params["tools"] = [_tool(t) for t in request.tools]
            assembler = _Assembler()
            # The SDK's raw request: its own ``create`` would first walk the whole history
            # through its TypedDict transform (1-3 ms of CPU per step).
            http: Any = await client.post(
                "/chat/completions",
                cast_to=_RESPONSE,
                # Encoded here (the SDK sends its `content` as it is): msgspec, not the SDK's
                # json.dumps (about 10x the CPU on a long history).
                content=_encode(params),
                stream=True,
                stream_cls=openai.AsyncStream[Any],  # not used for a raw response
            )
            try:
                reader = _Reader(http, assembler)
                body = body_chunks(http)
                while not reader.done:
                    raw: bytes | None
                    try:
                        raw = await anext(body)
                    except StopAsyncIteration:
                        raw = None  # the body ended: the decoder's last frame
                    except TIMEOUT_ERRORS as exc:
                        raise openai.APITimeoutError(request=http.request) from exc
                    except TRANSPORT_ERRORS as exc:
                        raise openai.APIConnectionError(request=http.request) from exc
                    for event in reader.events(raw):
                        yield event
                    if reader.error is not None:
                        raise reader.error
                    if raw is None:
                        break
            finally:
                # Shielded: on cancel the request must still be closed now, not at GC. A
                # response closed before its end closes its connection (never pooled), so
                # the server sees the disconnect and stops generating.
                with aio.cancel_scope(shield=True):
                    await http.aclose()
            for event in assembler.close():
                yield event
            yield assembler.end()
        except openai.APIError as exc:
            raise _translate(exc) from None
        except msgspec.DecodeError as exc:  # a frame that is not JSON
            raise ProviderError(f"openai: malformed stream: {exc}", retryable=False) from None

    def _client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            # Local servers need no key, but the SDK wants one (and would read
            # OPENAI_API_KEY, meant for another server, if given none).
            api_key=self.spec.api_key or "no-key",
            base_url=self.spec.base_url,
            max_retries=0,
            timeout=self.timeout,
            # aiohttp under the SDK's client (``_http.py``), with the one shared TLS context
            # (a context of its own would load the CA bundle).
            http_client=sdk_http_client(openai.DefaultAsyncHttpxClient, self.timeout),
        )


# One SDK client per endpoint (and event loop), its connections kept alive between steps: a
# client per step cost a new connection (a TLS handshake with a real API), the client's
# setup and its platform probe in a thread, about 1-2 ms of CPU per step.
_CLIENTS: PerLoop[openai.AsyncOpenAI] = PerLoop()


def _make(spec: ProviderSpec, settings: Settings) -> OpenAIProvider:
    return OpenAIProvider(spec, settings)


ADAPTER = Adapter(
    make=_make,
    options=OpenAIOptions,
    capabilities={"tools": True, "reasoning": True, "streaming": True},
)


# -- the request ---------------------------------------------------------------------------


def _tool(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": spec.parameters,
        },
    }


def to_messages(
    system_prompt: str | None, history: tuple[ChatMessage, ...]
) -> list[dict[str, Any]]:
    """Our history as Chat Completions messages. Reasoning is not sent back: the API has no
    field for it (and DeepSeek rejects ``reasoning_content`` in a request)."""
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for m in history:
        if m.role == "user":
            out.append({"role": "user", "content": m.content})
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        else:
            out.append(_assistant(m.blocks))
    return out


def _assistant(blocks: tuple[Block, ...]) -> dict[str, Any]:
    text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": _arguments_text(b)},
        }
        for b in blocks
        if isinstance(b, ToolCallBlock)
    ]
    # null content only beside tool calls: a reasoning-only answer goes back as "".
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _arguments_text(block: ToolCallBlock) -> str:
    if block.arguments is not None:
        return json.dumps(block.arguments, ensure_ascii=False)
    return block.arguments_text or "{}"


# -- the stream ----------------------------------------------------------------------------

# The fields of a chunk the assembler reads, and no others (msgspec skips the rest without
# building them). Text and reasoning are typed ``Any`` and checked where read: a server
# that sends something else there loses that field, not the whole chunk.


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: Any = None  # a string; an object from some Ollama versions


class _Fragment(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: Any = None
    reasoning: Any = None
    reasoning_content: Any = None
    tool_calls: list[_Fragment] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Details(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None  # an error object sent inside the stream


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode


class _Reader:
    """The events of the response's ``data:`` frames, up to ``[DONE]`` (then ``done``) or
    an error object (then ``error``, raised once the events before it are out)."""

    __slots__ = ("assembler", "decoder", "done", "error", "response", "skipper")

    def __init__(self, response: Any, assembler: _Assembler) -> None:
        self.response = response
        self.assembler = assembler
        self.decoder = SSEDecoder()
        self.skipper = Skipper(log, "openai")
        self.done = False
        self.error: openai.APIError | None = None

    def events(self, raw: bytes | None) -> list[StreamEvent]:
        """What the frames ``raw`` completes make (``None``: the body ended)."""
        frames = self.decoder.feed(raw) if raw is not None else self.decoder.flush()
        out: list[StreamEvent] = []
        for _, data in frames:
            if data[:6] == b"[DONE]":
                self.done = True
                break
            try:
                chunk = _decode_chunk(data)
            except msgspec.ValidationError as exc:
                self.skipper.skip(data, exc)
                continue
            if chunk.error:
                self.error = _stream_error(chunk.error, self.response)
                self.done = True
                break
            out += self.assembler.feed(chunk)
        return out


def _stream_error(error: Any, response: Any) -> openai.APIError:
    """An error object inside the stream, as the SDK's own reader raises it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, response.request, body=error)


class _Call:
    __slots__ = ("arguments", "id", "index", "name", "started", "whole")

    def __init__(self, call_id: str, index: int | None) -> None:
        self.id = call_id
        self.index = index
        self.name = ""
        self.arguments: list[str] = []
        self.started = False
        self.whole: Any = None  # arguments that came as an object, not a string


class _Assembler:
    """Chat Completions chunks -> our stream events; see the module docstring."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.by_id: dict[str, _Call] = {}
        self.by_index: dict[int, _Call] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None

    def feed(self, chunk: _Chunk) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if chunk.usage is not None:
            self.usage = _usage(chunk.usage)
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                # vLLM/OpenRouter/Ollama name it `reasoning`, DeepSeek/llama.cpp
                # `reasoning_content`.
                reasoning = delta.reasoning or delta.reasoning_content
                if reasoning and isinstance(reasoning, str):
                    out.append(ReasoningDelta(reasoning))
                content = delta.content
                if content and isinstance(content, str):
                    out.append(TextDelta(content))
                if delta.tool_calls:
                    for fragment in delta.tool_calls:
                        out += self._fragment(fragment)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return out

    def _call_for(self, fragment: _Fragment) -> _Call:
        call_id = fragment.id or None
        index = fragment.index
        if call_id is not None and call_id in self.by_id:
            return self.by_id[call_id]
        known = self.by_index.get(index) if index is not None else None
        # A new id is a new call, even under an index already used (every parallel call
        # sent as index 0); no id continues the call of its index, else the last one.
        if call_id is None:
            if known is not None:
                return known
            if index is None and self.calls:
                return self.calls[-1]
            call_id = f"call_{len(self.calls)}"
        call = _Call(call_id, index)
        self.calls.append(call)
        self.by_id[call_id] = call
        if index is not None:
            self.by_index[index] = call
        return call

    def _fragment(self, fragment: _Fragment) -> list[StreamEvent]:
        call = self._call_for(fragment)
        function = fragment.function or _Function()
        out: list[StreamEvent] = []
        if function.name and not call.name:
            call.name = function.name
        if not call.started and call.name:
            call.started = True
            out.append(ToolCallStarted(call.id, call.name))
            if call.arguments:  # fragments that came before the name
                out.append(ToolCallDelta(call.id, "".join(call.arguments)))
        arguments = function.arguments
        if arguments is None or arguments == "":
            return out
        if not isinstance(arguments, str):  # an object, not a string (some Ollama versions)
            call.whole = arguments
            arguments = json.dumps(arguments, ensure_ascii=False)
        call.arguments.append(arguments)
        if call.started:
            out.append(ToolCallDelta(call.id, arguments))
        return out

    def close(self) -> list[StreamEvent]:
        """The tool calls' ``ready`` events (Chat Completions has no per-call end)."""
        out: list[StreamEvent] = []
        for call in self.calls:
            if not call.started:  # never named: still a call, so its id gets a result
                call.started = True
                out.append(ToolCallStarted(call.id, call.name or "unknown"))
                if call.arguments:
                    out.append(ToolCallDelta(call.id, "".join(call.arguments)))
            out.append(ToolCallReady(call.id, _parsed(call)))
        return out

    def end(self) -> StepEnd:
        reason = self.finish_reason or "stop"
        if self.calls and reason == "stop":  # llama.cpp and some vLLM parsers say "stop"
            reason = "tool_calls"
        return StepEnd(reason, usage=self.usage)


def _parsed(call: _Call) -> Any:
    if call.whole is not None and len(call.arguments) == 1:
        return call.whole
    text = "".join(call.arguments).strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return None  # kept as text in arguments_text; the tool sees no arguments


def _usage(raw: _Usage) -> dict[str, int]:
    prompt = raw.prompt_tokens_details
    completion = raw.completion_tokens_details
    return usage(
        raw.prompt_tokens,
        raw.completion_tokens,
        cached_tokens=prompt.cached_tokens if prompt is not None else None,
        reasoning_tokens=completion.reasoning_tokens if completion is not None else None,
    )


# -- errors --------------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529}


def _translate(exc: openai.APIError) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "timeout"
        what = "connecting" if "Connect" in cause else "waiting for the server"
        return ProviderError(f"openai: timed out {what} ({cause})", retryable=False)
    if isinstance(exc, openai.APIConnectionError):
        reason = exc.__cause__ or exc
        host = host_of(exc, None, "https://api.openai.com/v1")
        return ProviderError(f"openai: connection to {host} failed: {reason}", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return ProviderError(
            f"openai: HTTP {status}: {_message(exc)}",
            retryable=status in _RETRYABLE_STATUS,
            retry_after=retry_after(exc.response.headers),
        )
    # An error object inside the stream (the SDK raises APIError for it).
    body = exc.body if isinstance(exc.body, dict) else {}
    kind = f"{body.get('type') or ''} {body.get('code') or ''}".lower()
    retryable = any(w in kind for w in ("overload", "rate_limit", "server_error", "unavailable"))
    return ProviderError(f"openai: error in the stream: {exc.message}", retryable=retryable)


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message

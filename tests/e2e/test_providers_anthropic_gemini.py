"""The anthropic and gemini providers end to end: a real ``turnlog serve`` process whose
provider (the official SDK) talks to a fake model API on loopback, driven over HTTP.

Each test runs once per provider (a ``Dialect`` writes that provider's wire transcripts and
reads its captured requests): send -> stream -> stored blocks equal the subscriber's fold;
the ``clock`` tool loop; a second turn sending back the first turn's signatures and tool
ids; SIGKILL mid-answer -> the row continued through the adapter, asked its provider's way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.providers import anthropic_wire as aw
from tests.providers import gemini_wire as gw
from tests.providers.fakeserver import Chunk, FakeServer, Pause, Reply
from turnlog.providers.base import CONTINUE_PROMPT

from .conftest import Databases, _make_server
from .support import Follower, Server, blocks_json, find, wait_until

pytestmark = pytest.mark.slow

SIG_REASONING = gw.sig("reasoning-signature-1")  # base64, so valid for either provider
SIG_CALL = gw.sig("call-signature-1")


@dataclass(frozen=True)
class Dialect:
    """One provider's side of these tests."""

    kind: str
    model: str
    env: Callable[[str], dict[str, str]]
    # A reply streaming ``pieces`` of text with ``pause`` seconds between them.
    text: Callable[[list[str], float], Reply]
    # The same after a signed reasoning block.
    reasoned_text: Callable[[list[str], float], Reply]
    # A reply with signed reasoning then one `clock` call with this id (and a signature,
    # where the API signs calls).
    signed_call: Callable[[str], Reply]
    # A 429 asking to wait 1 s (with the key echoed in its text), and a reply that fails
    # after the text "Half an answer".
    rate_limited: Callable[[], Reply]
    fails_midway: Callable[[], Reply]
    # The signatures and the tool ids (in calls, in results) of a captured request body.
    signatures: Callable[[Any], list[str]]
    tool_ids: Callable[[Any], tuple[list[str], list[str]]]


# -- anthropic -------------------------------------------------------------------------------


def _a_text_frames(index: int, pieces: list[str], pause: float) -> list[Chunk]:
    frames: list[Chunk] = [aw.block_start(index, {"type": "text", "text": ""})]
    for p in pieces:
        frames.append(aw.delta(index, {"type": "text_delta", "text": p}))
        if pause:
            frames.append(Pause(pause))
    frames.append(aw.block_stop(index))
    return frames


def _a_text(pieces: list[str], pause: float) -> Reply:
    return aw.message(_a_text_frames(0, pieces, pause))


def _a_reasoned_text(pieces: list[str], pause: float) -> Reply:
    return aw.message(
        aw.thinking(0, SIG_REASONING, "Think", "ing."), _a_text_frames(1, pieces, pause)
    )


def _a_signed_call(call_id: str) -> Reply:
    return aw.message(
        aw.thinking(0, SIG_REASONING, "The user wants ", "the time."),
        aw.tool_use(1, call_id, "clock", '{"timez', 'one": "UTC"}'),
        stop_reason="tool_use",
    )


def _a_signatures(body: Any) -> list[str]:
    return [
        c.get("signature") or c.get("data")
        for m in body["messages"]
        for c in m["content"]
        if c["type"] in ("thinking", "redacted_thinking")
    ]


def _a_tool_ids(body: Any) -> tuple[list[str], list[str]]:
    contents = [c for m in body["messages"] for c in m["content"]]
    return (
        [c["id"] for c in contents if c["type"] == "tool_use"],
        [c["tool_use_id"] for c in contents if c["type"] == "tool_result"],
    )


A_KEY = "sk-ant-e2e-0123456789abcdef"
G_KEY = "AIza-e2e-0123456789abcdef"


def _a_rate_limited() -> Reply:
    return aw.http_error(429, "rate_limit_error", f"Slow down, {A_KEY}", {"retry-after": "1"})


def _a_fails_midway() -> Reply:
    frames = _a_text_frames(0, ["Half an ", "answer"], 0.0)[:-1]  # the block never stops
    return Reply(body=[aw.message_start(), *frames, aw.error_event("api_error", "model crashed")])


ANTHROPIC = Dialect(
    kind="anthropic",
    model=f"anthropic:{aw.MODEL}",
    env=lambda url: {"ANTHROPIC_API_KEY": A_KEY, "ANTHROPIC_BASE_URL": url},
    text=_a_text,
    reasoned_text=_a_reasoned_text,
    signed_call=_a_signed_call,
    rate_limited=_a_rate_limited,
    fails_midway=_a_fails_midway,
    signatures=_a_signatures,
    tool_ids=_a_tool_ids,
)

# -- gemini ----------------------------------------------------------------------------------


def _g_text(pieces: list[str], pause: float) -> Reply:
    body: list[Chunk] = []
    for i, p in enumerate(pieces):
        body.append(gw.chunk(gw.text(p), finish="STOP" if i == len(pieces) - 1 else None))
        if pause:
            body.append(Pause(pause))
    return gw.reply(*body)


def _g_reasoned_text(pieces: list[str], pause: float) -> Reply:
    thought = gw.chunk(gw.text("Thinking.", thought=True, signature=SIG_REASONING))
    return gw.reply(thought, *_g_text(pieces, pause).body)


def _g_signed_call(call_id: str) -> Reply:
    call = gw.call("clock", {"timezone": "UTC"}, signature=SIG_CALL)
    call["functionCall"]["id"] = call_id
    return gw.reply(
        gw.chunk(gw.text("The user wants the time.", thought=True, signature=SIG_REASONING)),
        gw.chunk(call, finish="STOP"),
    )


def _g_signatures(body: Any) -> list[str]:
    return [
        p["thoughtSignature"]
        for c in body["contents"]
        for p in c["parts"]
        if "thoughtSignature" in p
    ]


def _g_tool_ids(body: Any) -> tuple[list[str], list[str]]:
    parts = [p for c in body["contents"] for p in c["parts"]]
    return (
        [p["functionCall"].get("id") for p in parts if "functionCall" in p],
        [p["functionResponse"].get("id") for p in parts if "functionResponse" in p],
    )


GEMINI = Dialect(
    kind="gemini",
    model=f"gemini:{gw.MODEL}",
    env=lambda url: {"GEMINI_API_KEY": G_KEY, "GEMINI_BASE_URL": url},
    text=_g_text,
    reasoned_text=_g_reasoned_text,
    signed_call=_g_signed_call,
    rate_limited=lambda: gw.http_error(429, "RESOURCE_EXHAUSTED", f"Quota, {G_KEY}", retry="1s"),
    fails_midway=lambda: gw.reply(
        gw.chunk(gw.text("Half an ")),
        gw.chunk(gw.text("answer")),
        gw.error_chunk(500, "INTERNAL", "model crashed"),
    ),
    signatures=_g_signatures,
    tool_ids=_g_tool_ids,
)


# -- fixtures --------------------------------------------------------------------------------


DIALECTS = [ANTHROPIC, GEMINI]


@dataclass
class Stack:
    """One fake API per dialect and one turnlog server pointed at all of them."""

    fakes: dict[str, FakeServer]
    server: Server

    def fake(self, d: Dialect) -> FakeServer:
        return self.fakes[d.kind]


@contextlib.contextmanager
def _fakes() -> Iterator[dict[str, FakeServer]]:
    with FakeServer() as a, FakeServer() as g:
        yield {ANTHROPIC.kind: a, GEMINI.kind: g}


def _env(fakes: dict[str, FakeServer]) -> dict[str, str]:
    return {k: v for d in DIALECTS for k, v in d.env(fakes[d.kind].url).items()}


@pytest.fixture(scope="module")
def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The fake APIs and a turnlog server using them, for the module."""
    with _fakes() as fakes:
        tmp = tmp_path_factory.mktemp("providers")
        srv = _make_server(databases, tmp, _env(fakes), None).start()
        try:
            yield Stack(fakes, srv)
        finally:
            srv.terminate(timeout=15)


def _bodies(fake: FakeServer, since: int, n: int) -> list[Any]:
    """The bodies of requests ``since`` .. ``since + n`` (waiting for them)."""
    return [r.json() for r in fake.wait_requests(since + n)[since : since + n]]


def _settled(c: Any, cid: str, n_rows: int) -> list[dict[str, Any]] | None:
    state = c.get_conversation(cid)
    rows: list[dict[str, Any]] = state["messages"]
    idle = state["conversation"]["state"] == "idle"
    if idle and len(rows) >= n_rows and not any(r["is_generating"] for r in rows):
        return rows
    return None


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.kind)
def test_stored_blocks_equal_the_subscribers_fold(stack: Stack, d: Dialect) -> None:
    """Send -> stream: the stored row's blocks (a signed reasoning block, text) equal what
    a subscriber folded; usage and finish reason are on the row."""
    stack.fake(d).queue(d.reasoned_text(["Sure", ", here ", "it ", "is."], 0.1))
    with stack.server.client() as c:
        conv = c.create_conversation(model=d.model, system_prompt="Be brief.")
        mid = c.send(conv["id"], "Hello?")["assistant_message"]["id"]
        fold = c.follow(mid)
        assert fold.done is not None
        assert fold.done.status == "completed", fold.done
        row = find(c.list_messages(conv["id"]), mid)
    assert row["status"] == "completed"
    assert row["blocks"] == blocks_json(fold.blocks)
    assert row["blocks"][0]["type"] == "reasoning"
    assert row["blocks"][0]["signature"] == SIG_REASONING
    assert row["blocks"][-1] == {"type": "text", "text": "Sure, here it is."}
    assert row["finish_reason"] == "stop"
    assert row["usage"]["input_tokens"] > 0
    assert row["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.kind)
def test_clock_tool_loop_then_a_second_turn_sends_signatures_and_tool_ids(
    stack: Stack, d: Dialect
) -> None:
    """The model calls `clock`: a tool row, and the next step (its request carrying the call
    and its result under one id) answers. A second turn's request carries the first turn's
    signatures and tool ids."""
    call_id = f"call_{d.kind}_clock_1"
    fake = stack.fake(d)
    since = len(fake.requests)
    fake.queue(
        d.signed_call(call_id),
        d.text(["It is ", "noon."], 0.0),
        d.text(["You are ", "welcome."], 0.0),
    )
    with stack.server.client() as c:
        conv = c.create_conversation(model=d.model)
        cid = conv["id"]
        c.send(cid, "What time is it?")
        rows = wait_until(lambda: _settled(c, cid, 4), timeout=60, what="the tool loop")
        assert [(r["role"], r["status"]) for r in rows] == [
            ("user", "completed"),
            ("assistant", "completed"),
            ("tool", "completed"),
            ("assistant", "completed"),
        ]
        step1, tool, step2 = rows[1], rows[2], rows[3]
        call = step1["blocks"][-1]
        assert (call["type"], call["id"], call["name"]) == ("tool_call", call_id, "clock")
        assert call["arguments"] == {"timezone": "UTC"}
        assert step1["blocks"][0]["signature"] == SIG_REASONING
        assert step1["finish_reason"] == "tool_calls"
        assert (tool["tool_call_id"], tool["tool_name"]) == (call_id, "clock")
        assert step2["blocks"] == [{"type": "text", "text": "It is noon."}]

        c.send(cid, "Thanks!")
        wait_until(lambda: _settled(c, cid, 6), timeout=60, what="the second turn")

    first, after_tool, second_turn = _bodies(fake, since, 3)
    assert d.tool_ids(first) == ([], [])
    assert d.tool_ids(after_tool) == ([call_id], [call_id])
    assert SIG_REASONING in d.signatures(after_tool)
    assert d.tool_ids(second_turn) == ([call_id], [call_id])
    assert SIG_REASONING in d.signatures(second_turn)
    if d is GEMINI:
        assert SIG_CALL in d.signatures(second_turn)


def test_sigkill_mid_answer_is_continued_through_each_adapter(
    databases: Databases, tmp_path: Path
) -> None:
    """SIGKILL while both providers stream: the provider sees the connection drop; the
    restarted server continues each row by itself, asking in the provider's way
    (docs/providers.md: Anthropic a prefilled assistant turn, trailing space trimmed;
    Gemini the model's turn then a user turn asking to go on); each row completes."""
    with _fakes() as fakes:
        srv = _make_server(databases, tmp_path, _env(fakes), None)
        try:
            srv.start()
            turns: dict[str, tuple[str, str, Follower]] = {}
            with srv.client() as c:
                for d in DIALECTS:
                    # Long enough to still be streaming whatever the machine's load.
                    fakes[d.kind].queue(d.text([f"word{i} " for i in range(3000)], 0.02))
                    cid = c.create_conversation(model=d.model)["id"]
                    mid = c.send(cid, "A long answer, please.")["assistant_message"]["id"]
                    follower = Follower(srv.client(), mid, reconnects=0)
                    follower.start()
                    turns[d.kind] = (cid, mid, follower)

                def checkpointed() -> bool:
                    for cid, mid, follower in turns.values():
                        row = find(c.list_messages(cid), mid)
                        if not row["blocks"] or len(follower.text().split()) < 20:
                            return False
                    return True

                wait_until(checkpointed, timeout=60, what="a checkpoint of each answer")
            srv.kill()
            for kind, (_, _, follower) in turns.items():
                follower.join(10)
                assert fakes[kind].requests[0].disconnected.wait(10), f"{kind} request lingers"
            # The restart continues each row at once: their continuations are queued first.
            for d in DIALECTS:
                fakes[d.kind].queue(d.text([" and", " the rest."], 0.0))
            srv.start()
            with srv.client() as c:
                for d in DIALECTS:
                    cid, mid, _ = turns[d.kind]
                    fold = c.follow(mid)
                    assert fold.done is not None
                    assert fold.done.status == "completed"
                    row = find(c.list_messages(cid), mid)
                    assert row["status"] == "completed"
                    text = row["blocks"][-1]["text"]
                    assert text.startswith("word0 word1 ")
                    body = fakes[d.kind].requests[-1].json()
                    if d.kind == "anthropic":
                        # The prefill without its trailing space; the model's leading space
                        # then dropped, so the stored text has one space at the seam.
                        last = body["messages"][-1]
                        assert last["role"] == "assistant"
                        partial = last["content"][0]["text"]
                        assert text == partial + " and the rest."
                        assert not partial.endswith(" ")
                    else:
                        model, ask = body["contents"][-2:]
                        assert model["role"] == "model"
                        assert ask["parts"][0]["text"] == CONTINUE_PROMPT
                        assert text == model["parts"][0]["text"] + " and the rest."
        finally:
            srv.kill()


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.kind)
def test_429_then_success_honours_the_wait_asked_for(stack: Stack, d: Dialect) -> None:
    """A 429 before any output is retried after the wait the API asked for (Anthropic's
    Retry-After, Gemini's RetryInfo), then the answer completes."""
    fake = stack.fake(d)
    before = len(fake.requests)
    fake.queue(d.rate_limited(), d.text(["After ", "waiting."], 0.0))
    with stack.server.client() as c:
        cid = c.create_conversation(model=d.model)["id"]
        c.send(cid, "hello")
        rows = wait_until(lambda: _settled(c, cid, 2), timeout=60, what="the answer")
    assert rows[1]["status"] == "completed"
    assert rows[1]["blocks"] == [{"type": "text", "text": "After waiting."}]
    first, second = fake.wait_requests(before + 2)[before:]
    assert second.at - first.at >= 0.95, "the retry came before the asked wait had passed"


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.kind)
def test_error_mid_stream_ends_the_row_error_with_its_partial_blocks(
    stack: Stack, d: Dialect
) -> None:
    """An error event after output is final: the row is `error`, keeps its text, is not
    retried, and its error text names the failure without the key."""
    fake = stack.fake(d)
    before = len(fake.requests)
    fake.queue(d.fails_midway())
    with stack.server.client() as c:
        cid = c.create_conversation(model=d.model)["id"]
        c.send(cid, "go")
        rows = wait_until(lambda: _settled(c, cid, 2), timeout=60, what="the failed row")
    assert rows[1]["status"] == "error"
    assert "model crashed" in rows[1]["error"]
    assert rows[1]["blocks"] == [{"type": "text", "text": "Half an answer"}]
    assert len(fake.requests) == before + 1
    assert A_KEY not in stack.server.log()
    assert G_KEY not in stack.server.log()


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.kind)
def test_cancel_closes_the_provider_request_at_once(stack: Stack, d: Dialect) -> None:
    """cancel aborts the row with its partial text, and the provider's server sees its
    request go away."""
    fake = stack.fake(d)
    before = len(fake.requests)
    fake.queue(d.text(["Partial"] + [" more"] * 1000, 0.05))
    with stack.server.client() as c:
        cid = c.create_conversation(model=d.model)["id"]
        mid = c.send(cid, "long one")["assistant_message"]["id"]
        follower = Follower(stack.server.client(), mid)
        follower.start()
        wait_until(lambda: follower.text().startswith("Partial"), what="the first text")
        row = c.cancel(mid)
        follower.join(10)
    assert row["status"] == "aborted"
    assert row["blocks"][0]["text"].startswith("Partial")
    assert fake.requests[before].disconnected.wait(10)

"""The ``openai`` provider through the HTTP API: a real ``turnlog serve`` (configured by
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` alone) talking through the SDK to the scripted
server on loopback. The engine's failure rules are pinned here, once for every provider:
retries honouring Retry-After, first-token and stall timeouts, cancel closing the request,
no API key in stored errors, SIGKILL mid-answer."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.providers.fakeserver import FakeServer, Hold, Pause, json_reply
from tests.providers.openai_wire import call, chunk, stream, usage_chunk
from turnlog.client import Client
from turnlog.providers.base import CONTINUE_PROMPT

from .conftest import Databases
from .support import Follower, Server, blocks_json, find, wait_until

pytestmark = pytest.mark.slow

KEY = "sk-e2e-" + uuid.uuid4().hex
MODEL = "openai:test-model"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def _env(fake: FakeServer) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": fake.url + "/v1",
        "OPENAI_API_KEY": KEY,
        "TURNLOG_PROVIDER_FIRST_TOKEN_TIMEOUT_S": "3",
        "TURNLOG_PROVIDER_STALL_TIMEOUT_S": "1.5",
        "TURNLOG_PROVIDER_BACKOFF_S": "0.05",
        "TURNLOG_PROVIDER_RETRIES": "2",
    }


@pytest.fixture(scope="module")
def oai(
    fake: FakeServer, databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("openai")
    srv = Server(
        database_url=databases.create(),
        data_dir=data_dir,
        log_path=data_dir / "server.log",
        env_overrides=_env(fake),
    ).start()
    yield srv
    srv.terminate(timeout=15)


@pytest.fixture(autouse=True)
def _fresh_queue(fake: FakeServer) -> None:
    fake.clear()


def _settled(c: Client, cid: str, n_rows: int) -> list[dict[str, Any]]:
    """Wait until the conversation is idle with ``n_rows`` rows; the rows."""

    def probe() -> list[dict[str, Any]] | None:
        conv = c.get_conversation(cid)
        rows: list[dict[str, Any]] = conv["messages"]
        if conv["conversation"]["state"] == "idle" and len(rows) == n_rows:
            return rows
        return None

    return wait_until(probe, timeout=30, what=f"{n_rows} settled rows")


def _answer(text: str, *, usage: tuple[int, int] | None = (12, 3)) -> list[Any]:
    words = [chunk({"content": w}) for w in text.replace(" ", "\0 ").split("\0")]
    return [*words, chunk({}, "stop"), *([usage_chunk(*usage)] if usage else [])]


def test_send_stream_store_equal_fold(oai: Server, fake: FakeServer) -> None:
    """Reasoning and text stream to the subscriber; the stored row equals its fold, with the
    usage and finish reason in the one shape of every provider."""
    fake.queue(
        stream(
            chunk({"role": "assistant", "reasoning_content": "Thinking"}),
            Pause(0.2),
            chunk({"reasoning_content": " briefly."}),
            *_answer("Hello from the fake model."),
        )
    )
    with oai.client() as c:
        conv = c.create_conversation(model=MODEL, system_prompt="Be kind.")
        sent = c.send(conv["id"], "hi there")
        fold = c.follow(sent["assistant_message"]["id"])
        assert fold.done is not None
        assert fold.done.status == "completed"
        row = find(c.list_messages(conv["id"]), sent["assistant_message"]["id"])
    assert row["blocks"] == blocks_json(fold.blocks)
    assert [b["type"] for b in row["blocks"]] == ["reasoning", "text"]
    assert row["blocks"][1]["text"] == "Hello from the fake model."
    assert row["finish_reason"] == "stop"
    assert row["usage"] == {"input_tokens": 12, "output_tokens": 3}
    body = fake.requests[-1].json()
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi there"},
    ]


def test_clock_tool_loop_and_the_next_turn_carries_the_tool_ids(
    oai: Server, fake: FakeServer
) -> None:
    """The model calls clock (ending "stop", a llama.cpp quirk); a tool row and the next
    step follow; the next turn's request carries the call's id and its result."""
    fake.queue(
        stream(
            chunk({"tool_calls": [call(0, "call_clock_1", "clock", '{"timezone":')]}),
            chunk({"tool_calls": [call(0, args=' "UTC"}')]}),
            chunk({}, "stop"),
        ),
        stream(*_answer("It is noon.")),
        stream(*_answer("You are welcome.")),
    )
    with oai.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        c.send(cid, "what time is it?")
        rows = _settled(c, cid, 4)
        assert [(r["role"], r["status"]) for r in rows] == [
            ("user", "completed"),
            ("assistant", "completed"),
            ("tool", "completed"),
            ("assistant", "completed"),
        ]
        assert rows[1]["finish_reason"] == "tool_calls"
        assert rows[1]["blocks"][0]["arguments"] == {"timezone": "UTC"}
        assert rows[2]["tool_call_id"] == "call_clock_1"
        c.send(cid, "thanks")
        _settled(c, cid, 6)
    messages = fake.requests[-1].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[1]["tool_calls"][0]["id"] == "call_clock_1"
    assert messages[2]["tool_call_id"] == "call_clock_1"
    assert messages[2]["content"] == rows[2]["content"]


def test_429_then_success_honours_retry_after(oai: Server, fake: FakeServer) -> None:
    """A 429 before any output is retried after the Retry-After the server asked for."""
    before = len(fake.requests)
    fake.queue(
        json_reply(
            429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "1"}
        ),
        stream(*_answer("Made it.")),
    )
    with oai.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        c.send(cid, "hello")
        rows = _settled(c, cid, 2)
    assert rows[1]["status"] == "completed"
    first, second = fake.requests[before:]
    assert second.at - first.at >= 0.95, "the retry came before Retry-After had passed"


def test_error_mid_stream_ends_the_row_error_with_its_partial_blocks(
    oai: Server, fake: FakeServer
) -> None:
    """After output a provider error is final: the row is `error` and keeps what came."""
    fake.queue(
        stream(
            chunk({"content": "Half an "}),
            chunk({"content": "answer"}),
            {"error": {"message": "the model crashed", "type": "server_error"}},
            done=False,
        )
    )
    with oai.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        c.send(cid, "go")
        rows = _settled(c, cid, 2)
    assert rows[1]["status"] == "error"
    assert "the model crashed" in rows[1]["error"]
    assert rows[1]["blocks"] == [{"type": "text", "text": "Half an answer"}]


@pytest.mark.parametrize(
    ("body", "what"), [([], "first token"), ([chunk({"content": "so far"})], "stalled")]
)
def test_first_token_and_stall_timeouts_end_the_row(
    oai: Server, fake: FakeServer, body: list[Any], what: str
) -> None:
    """No first token for 3 s, or nothing for 1.5 s after one: the row ends `error` and
    the request is closed (the server sees the disconnect)."""
    before = len(fake.requests)
    fake.queue(stream(*body, Hold(60), done=False))
    with oai.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        c.send(cid, "hang")
        rows = _settled(c, cid, 2)
    assert rows[1]["status"] == "error"
    assert what in rows[1]["error"]
    assert len(fake.requests) == before + 1, "a timeout is not retried"
    assert fake.requests[before].disconnected.wait(10)


def test_cancel_closes_the_provider_request_at_once(oai: Server, fake: FakeServer) -> None:
    """cancel aborts the row with its partial text and the provider's server sees the
    request go away."""
    before = len(fake.requests)
    fake.queue(stream(chunk({"content": "Partial"}), Hold(60), done=False))
    with oai.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        mid = c.send(cid, "long one")["assistant_message"]["id"]
        follower = Follower(oai.client(), mid)
        follower.start()
        wait_until(lambda: follower.fold.text == "Partial", what="the first text")
        row = c.cancel(mid)
        follower.join(10)
    assert row["status"] == "aborted"
    assert row["blocks"] == [{"type": "text", "text": "Partial"}]
    assert fake.requests[before].disconnected.wait(10)


def test_stored_errors_never_contain_the_api_key(oai: Server, fake: FakeServer) -> None:
    """A provider that echoes the key in its error text: the row's error has it masked."""
    fake.queue(json_reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    with oai.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        c.send(cid, "hello")
        rows = _settled(c, cid, 2)
    assert rows[1]["status"] == "error"
    assert "401" in rows[1]["error"]
    assert KEY not in rows[1]["error"]
    assert KEY not in oai.log()
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_sigkill_mid_answer_is_continued_through_the_adapter(
    fake: FakeServer, spawn: Callable[..., Server]
) -> None:
    """SIGKILL while the model streams: the restarted server continues the row by itself,
    asking the model to go on after the stored partial (the partial as the last assistant
    message, then the continue instruction: docs/providers.md); the row completes with the
    partial and the continuation, and readers see ``recovering``."""
    words = [chunk({"content": f"w{i} "}) for i in range(40)]
    paced = [part for w in words for part in (w, Pause(0.1))]
    fake.queue(stream(*paced, chunk({}, "stop")))
    srv = spawn(env=_env(fake)).start()
    with srv.client() as c:
        cid = c.create_conversation(model=MODEL)["id"]
        mid = c.send(cid, "a long answer")["assistant_message"]["id"]
        wait_until(
            lambda: find(c.list_messages(cid), mid)["blocks"], timeout=30, what="a checkpoint"
        )
    srv.kill()
    # The restart continues the row at once: the continuation's answer is queued first.
    fake.queue(stream(*_answer("and the rest.")))
    srv.start()
    with srv.client() as c:
        fold = c.follow(mid)
        row = find(c.list_messages(cid), mid)
    assert fold.done is not None
    assert fold.done.status == "completed"
    assert row["status"] == "completed"
    sent = fake.requests[-1].json()["messages"]
    assert sent[0] == {"role": "user", "content": "a long answer"}
    assert sent[1]["role"] == "assistant"
    partial = sent[1]["content"]
    assert partial.startswith("w0 w1 ")
    assert sent[2] == {"role": "user", "content": CONTINUE_PROMPT}
    assert len(sent) == 3
    assert blocks_json(fold.blocks) == row["blocks"]
    assert row["blocks"] == [{"type": "text", "text": partial + "and the rest."}]
    srv.terminate(timeout=15)

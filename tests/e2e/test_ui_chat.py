"""The AI SDK routes over real HTTP (§3b): wire format, chat ids, auth and bad input.

What the real `ai` client assembles from these streams is checked in tests/aisdk (Node).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from turnlog.http.ui_chat import CHAT_NAMESPACE

from .support import FAST, Server, assert_problem

pytestmark = pytest.mark.slow


def chat_body(chat_id: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    message = {
        "id": f"ui-{uuid.uuid4().hex[:8]}",
        "role": "user",
        "parts": [{"type": "text", "text": text}],
    }
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", **extra}


def chunks(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a UI message stream, ``[DONE]`` kept as a string."""
    out: list[Any] = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "" or line.startswith(":"), line
    return out


def test_a_turn_streams_as_ui_message_chunks_ending_with_done(server: Server) -> None:
    """Header v1, one JSON chunk per data line, start first, finish then [DONE] last."""
    with server.http("alice", timeout=60) as http:
        r = http.post("/v1/ui/chat", json=chat_body("wire-1", options=FAST))
    assert r.status_code == 200, r.text
    assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert r.headers["content-type"].startswith("text/event-stream")
    got = chunks(r)
    assert got[0]["type"] == "start"
    assert got[1] == {"type": "start-step"}
    assert got[-2] == {
        "type": "finish",
        "messageMetadata": {"status": "completed", "finishReason": "stop"},
    }
    assert got[-1] == "[DONE]"


def test_a_chat_id_names_a_conversation_of_its_user_only(server: Server) -> None:
    """A nanoid chat id maps to uuid5(owner, id): the same id of another user is another
    chat, and nothing of alice's is visible to bob."""
    chat_id = "V1StGXR8_Z5jdHi6"
    with server.http("alice", timeout=60) as alice, server.http("bob") as bob:
        assert alice.post("/v1/ui/chat", json=chat_body(chat_id, options=FAST)).status_code == 200
        cid = uuid.uuid5(CHAT_NAMESPACE, f"alice\x00{chat_id}")
        conv = alice.get(f"/v1/conversations/{cid}")
        assert conv.status_code == 200, conv.text
        assert [m["role"] for m in conv.json()["messages"]] == ["user", "assistant"]
        ui = alice.get(f"/v1/ui/chat/{chat_id}/messages").json()
        assert [m["role"] for m in ui] == ["user", "assistant"]
        assert bob.get(f"/v1/ui/chat/{chat_id}/messages").json() == []
        # alice's conversation id, used by bob as a chat id, names bob's own (new) chat.
        assert bob.get(f"/v1/ui/chat/{cid}/messages").json() == []
        assert bob.get(f"/v1/ui/chat/{cid}/stream").status_code == 204


def test_a_conversation_id_opens_that_conversation(server: Server) -> None:
    """An existing conversation of the caller can be hydrated and continued by its id."""
    with server.client("alice") as c:
        conv = c.create_conversation(options=FAST)
        sent = c.send(conv["id"], "first, over the plain API")
        c.follow(sent["assistant_message"]["id"])
    with server.http("alice", timeout=60) as http:
        ui = http.get(f"/v1/ui/chat/{conv['id']}/messages").json()
        assert ui[0] == {
            "id": sent["user_message"]["id"],
            "role": "user",
            "parts": [{"type": "text", "text": "first, over the plain API"}],
        }
        assert ui[1]["id"] == sent["assistant_message"]["id"]
        r = http.post("/v1/ui/chat", json=chat_body(conv["id"], "second, over useChat"))
        assert r.status_code == 200, r.text
        rows = http.get(f"/v1/conversations/{conv['id']}/messages").json()["items"]
        assert [m["role"] for m in rows] == ["user", "assistant", "user", "assistant"]


def test_every_route_needs_the_token(server: Server) -> None:
    """401 without a bearer token on all four routes."""
    with server.http(None) as anon:
        assert_problem(anon.post("/v1/ui/chat", json=chat_body("x")), 401)
        assert_problem(anon.get("/v1/ui/chat/x/stream"), 401)
        assert_problem(anon.post("/v1/ui/chat/x/stop"), 401)
        assert_problem(anon.get("/v1/ui/chat/x/messages"), 401)


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[]",
        json.dumps({"id": "x", "messages": [], "trigger": "submit-message"}).encode(),
        json.dumps({**chat_body("x"), "trigger": "resume-stream"}).encode(),
        json.dumps({**chat_body("x"), "surprise": 1}).encode(),
        json.dumps(chat_body("x", text="   ")).encode(),
        json.dumps(chat_body("")).encode(),
        json.dumps(chat_body("y" * 201)).encode(),
        json.dumps(chat_body("x", options={"no_such_option": 1})).encode(),
    ],
)
def test_bad_input_is_4xx_with_detail(server: Server, payload: bytes) -> None:
    """Malformed, unknown or empty input is a 4xx with a readable detail, never a 500."""
    with server.http("carol") as http:
        r = http.post("/v1/ui/chat", content=payload, headers={"content-type": "application/json"})
    assert_problem(r, 400)


def test_busy_chat_and_nothing_to_stop_are_409(server: Server) -> None:
    """A send while the chat generates is 409; stop when nothing generates is 409."""
    slow = {"tokens_per_second": 20, "length": 400}
    with server.http("dave", timeout=60) as http:
        assert_problem(http.post("/v1/ui/chat/busy-1/stop"), 409)
        with http.stream("POST", "/v1/ui/chat", json=chat_body("busy-1", options=slow)) as r:
            assert r.status_code == 200
            assert_problem(http.post("/v1/ui/chat", json=chat_body("busy-1")), 409)
            stopped = http.post("/v1/ui/chat/busy-1/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "aborted"
            r.read()
        got = chunks(r)
        assert got[-3:] == [
            {"type": "message-metadata", "messageMetadata": {"status": "aborted"}},
            {"type": "abort"},
            "[DONE]",
        ]
        assert http.get("/v1/ui/chat/busy-1/stream").status_code == 204

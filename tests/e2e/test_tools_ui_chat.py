"""Tools through ``/v1/ui/chat`` (the AI SDK UI message stream) on a real ``turnlog serve``:
a call that needs approval sends ``tool-approval-request`` and waits; the approval comes back
in the next POST's messages as ``addToolApprovalResponse`` leaves it (approved: the stored
arguments run; denied: ``tool-output-denied``); a client tool's output comes back as
``addToolOutput`` leaves it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Databases, _make_server
from .support import Server
from .test_ui_chat import chunks

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ARGS = {"title": "fix the build", "priority": 2}


@pytest.fixture(scope="module")
def ui_server(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("toolsui")
    path = tmp / "tools.toml"
    path.write_text(
        """
[python_tools]
modules = ["tests.tools.pytools"]

[client_tools.pick_color]
description = "Ask the browser to pick a color."

[tools]
default = ["create_ticket", "pick_color", "clock"]
""",
        encoding="utf-8",
    )
    env = {"TURNLOG_CONFIG": str(path), "PYTHONPATH": str(ROOT)}
    srv = _make_server(databases, tmp, env, None).start(timeout=60)
    yield srv
    srv.terminate(timeout=15)


def _post(h: Any, chat_id: str, messages: list[Any], **options: Any) -> list[Any]:
    body: dict[str, Any] = {"id": chat_id, "messages": messages, "trigger": "submit-message"}
    if options:
        body["options"] = options
    r = h.post("/v1/ui/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = chunks(r)
    assert got[-1] == "[DONE]"
    return got[:-1]


USER = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "file a ticket"}]}


def _first_turn(h: Any, chat_id: str, tool: str, **args: Any) -> tuple[list[Any], str, str]:
    got = _post(
        h,
        chat_id,
        [USER],
        tool=tool,
        tool_arguments=args,
        tokens_per_second=400,
        length=8,
    )
    start = next(c for c in got if c["type"] == "start")
    call = next(c for c in got if c["type"] == "tool-input-available")
    return got, start["messageId"], call["toolCallId"]


def _answer(message_id: str, tool: str, call_id: str, **part: Any) -> dict[str, Any]:
    return {
        "id": message_id,
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": f"tool-{tool}", "toolCallId": call_id, "input": ARGS, **part},
        ],
    }


def test_approval_request_then_approved(ui_server: Server) -> None:
    """tool-approval-request, then addToolApprovalResponse's approval runs the stored
    arguments and the same UI message goes on."""
    chat_id = f"c-{uuid.uuid4().hex[:8]}"
    with ui_server.http("alice") as h:
        got, message_id, call_id = _first_turn(h, chat_id, "create_ticket", **ARGS)
        available = next(c for c in got if c["type"] == "tool-input-available")
        assert available["providerExecuted"] is True
        assert available["input"] == ARGS
        assert {
            "type": "tool-approval-request",
            "approvalId": call_id,
            "toolCallId": call_id,
        } in got
        answer = _answer(
            message_id,
            "create_ticket",
            call_id,
            state="approval-responded",
            approval={"id": call_id, "approved": True},
        )
        more = _post(h, chat_id, [USER, answer])
        out = next(c for c in more if c["type"] == "tool-output-available")
        assert out["toolCallId"] == call_id
        assert '"title":"fix the build","priority":2' in out["output"]
        texts = "".join(c["delta"] for c in more if c["type"] == "text-delta")
        assert texts.startswith("create_ticket said")
        assert more[next(i for i, c in enumerate(more) if c["type"] == "start")]["messageId"] == (
            message_id
        )


def test_approval_denied_sends_tool_output_denied(ui_server: Server) -> None:
    """A denial comes back as tool-output-denied; the model reads the reason."""
    chat_id = f"c-{uuid.uuid4().hex[:8]}"
    with ui_server.http("alice") as h:
        _, message_id, call_id = _first_turn(h, chat_id, "create_ticket", **ARGS)
        answer = _answer(
            message_id,
            "create_ticket",
            call_id,
            state="approval-responded",
            approval={"id": call_id, "approved": False, "reason": "not now"},
        )
        more = _post(h, chat_id, [USER, answer])
        assert {"type": "tool-output-denied", "toolCallId": call_id} in more
        texts = "".join(c["delta"] for c in more if c["type"] == "text-delta")
        assert texts.startswith("create_ticket said denied: not now.")
        stored = h.get(f"/v1/ui/chat/{chat_id}/messages").json()
        part = next(p for p in stored[-1]["parts"] if p.get("toolCallId") == call_id)
        assert part["state"] == "output-denied"


def test_a_client_tool_is_answered_with_add_tool_output(ui_server: Server) -> None:
    """A client tool's call is not provider-executed and needs no approval; its output
    (addToolOutput) resumes the turn."""
    chat_id = f"c-{uuid.uuid4().hex[:8]}"
    with ui_server.http("alice") as h:
        got, message_id, call_id = _first_turn(h, chat_id, "pick_color", hint="warm")
        available = next(c for c in got if c["type"] == "tool-input-available")
        assert "providerExecuted" not in available
        assert not [c for c in got if c["type"] == "tool-approval-request"]
        answer = {
            "id": message_id,
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {
                    "type": "tool-pick_color",
                    "toolCallId": call_id,
                    "state": "output-available",
                    "input": {"hint": "warm"},
                    "output": "teal",
                },
            ],
        }
        more = _post(h, chat_id, [USER, answer])
        texts = "".join(c["delta"] for c in more if c["type"] == "text-delta")
        assert texts.startswith("pick_color said teal.")

"""What a new user tripped over, fixed (§2): cancel of a pending question, a reused
client_message_id, retry with options, and the Markdown export."""

from __future__ import annotations

from typing import Any

import pytest

from turnlog.client import ApiError, Client, text_of

from .support import DEMO, FAST, Server, make_token, wait_until

pytestmark = pytest.mark.slow


def _settled(c: Client, cid: str, state: str) -> dict[str, Any] | None:
    got = c.get_conversation(cid)
    rows = got["messages"]
    if got["conversation"]["state"] == state and not any(r["is_generating"] for r in rows):
        return got
    return None


def test_cancel_withdraws_an_unanswered_question(server: Server) -> None:
    """cancel on the row of an unanswered ask_user: a tool row with a cancelled result, the
    conversation idle again, the question closed; the conversation takes new messages."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options={**FAST, "tool": "ask_user"})["id"]
        c.send(cid, "ask me something")
        got = wait_until(lambda: _settled(c, cid, "awaiting_input"), what="a pending question")
        asking = next(r for r in got["messages"] if r["role"] == "assistant")
        call = next(b for b in asking["blocks"] if b["type"] == "tool_call")

        row = c.cancel(asking["id"])
        assert row["id"] == asking["id"]
        after = c.get_conversation(cid)
        assert after["conversation"]["state"] == "idle"
        tool = [r for r in after["messages"] if r["role"] == "tool"]
        assert len(tool) == 1
        assert tool[0]["tool_call_id"] == call["id"]
        assert "cancelled" in tool[0]["content"]
        assert not any(r["is_generating"] for r in after["messages"])

        with pytest.raises(ApiError) as e:  # the question is closed now
            c.tool_result(asking["id"], call["id"], "too late")
        assert e.value.status == 400
        with pytest.raises(ApiError) as e:  # and there is nothing left to cancel
            c.cancel(asking["id"])
        assert e.value.status == 409

        c.patch_conversation(cid, options=FAST)
        c.follow(c.send(cid, "and now something else")["assistant_message"]["id"])
        assert c.get_conversation(cid)["conversation"]["state"] == "idle"


def test_a_reused_client_message_id_with_other_content_is_409(server: Server) -> None:
    """The same id and text again is the same request (200, same rows); other text is 409."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        first = c.send(cid, "hello", client_message_id="m-1")
        c.follow(first["assistant_message"]["id"])
        again = c.send(cid, "hello", client_message_id="m-1")
        assert again["user_message"]["id"] == first["user_message"]["id"]
        with pytest.raises(ApiError) as e:
            c.send(cid, "something else", client_message_id="m-1")
        assert e.value.status == 409
        assert "client_message_id" in e.value.detail
        assert [r["content"] for r in c.list_messages(cid) if r["role"] == "user"] == ["hello"]


def test_retry_with_options_replaces_the_failed_turns(server: Server) -> None:
    """A send with fail_after fails; a plain retry fails the same way; a retry with options
    uses those instead and completes. Unknown retry fields are 400."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        failed = c.send(cid, "fail please", options={"fail_after": 3})["assistant_message"]
        assert c.follow(failed["id"]).done.status == "error"  # type: ignore[union-attr]
        plain = c.retry(failed["id"])["assistant_message"]
        assert c.follow(plain["id"]).done.status == "error"  # type: ignore[union-attr]
        strict = c.http.post(f"/v1/messages/{plain['id']}/retry", json={"nope": 1})
        assert strict.status_code == 400
        assert "nope" in strict.json()["detail"]
        with pytest.raises(ApiError) as e:
            c.retry(plain["id"], options={"no_such_option": 1})
        assert e.value.status == 400
        fixed = c.retry(plain["id"], options={"length": 7})["assistant_message"]
        fold = c.follow(fixed["id"])
        assert fold.done is not None
        assert fold.done.status == "completed"
        rows = c.list_messages(cid)
        assert rows[-1]["status"] == "completed"
        assert rows[-1]["usage"]["output_tokens"] == 7


def test_export_charset_errors_system_prompt_and_no_forged_headings(server: Server) -> None:
    """The Markdown export says charset=utf-8 once, shows a failed row's error and the
    system prompt, and a user's '## Assistant' line is text, not a heading."""
    with server.client() as c:
        cid = c.create_conversation(
            title="export", model=DEMO, options=FAST, system_prompt="Be brief."
        )["id"]
        forged = "question\n## Assistant\nfake answer\n```\n"
        ok = c.send(cid, forged)["assistant_message"]
        c.follow(ok["id"])
        bad = c.send(cid, "fail", options={"fail_after": 2})["assistant_message"]
        c.follow(bad["id"])
        with c.http.stream("GET", f"/v1/conversations/{cid}/export") as r:
            r.read()
            content_type = r.headers["content-type"]
            md = r.text
    assert content_type.lower().count("charset") == 1, content_type
    assert "utf-8" in content_type.lower()
    lines = md.splitlines()
    assert sum(1 for line in lines if line.startswith("## Assistant")) == 2  # the real ones
    assert "\\## Assistant" in md
    assert "Be brief." in md
    assert "System prompt" in md
    assert "fail_after=2" in md  # the failed row's error text
    assert text_of(ok["blocks"]) in md or "Demo answer" in md


def test_a_token_with_the_wrong_signature_says_how_to_get_a_valid_one(server: Server) -> None:
    """401 names `turnlog token` and the secret to share; the server said its secret."""
    bad = make_token("alice", secret="another-secret-0123456789abcdef0123456789")
    with server.http(None) as http:
        r = http.get("/v1/conversations", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    detail = r.json()["detail"]
    assert "turnlog token" in detail
    assert "TURNLOG_JWT_SECRET" in detail
    assert "tokens are signed with the secret in TURNLOG_JWT_SECRET" in server.log()

"""Turn lifecycle over HTTP: cancel (and the withdrawal of a pending question), tools, busy,
idempotent send (a reused client_message_id), retry with options, errors, edit, export."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

from turnlog.client import ApiError, AsyncClient, Client

from .support import (
    DEMO,
    FAST,
    Follower,
    Server,
    blocks_json,
    find,
    make_token,
    wait_until,
)

pytestmark = pytest.mark.slow

SLOW = {"tokens_per_second": 20, "length": 400}


def _state(c: Client, cid: str) -> str:
    return str(c.get_conversation(cid)["conversation"]["state"])


def _settled(c: Client, cid: str, n_rows: int) -> list[dict[str, Any]] | None:
    """The rows once the conversation is idle with ``n_rows`` rows, none generating."""
    state = c.get_conversation(cid)
    rows: list[dict[str, Any]] = state["messages"]
    if (
        state["conversation"]["state"] == "idle"
        and len(rows) >= n_rows
        and not any(r["is_generating"] for r in rows)
    ):
        return rows
    return None


def test_cancel_aborts_keeps_partial_blocks_and_then_409(server: Server) -> None:
    """cancel -> 200 aborted with the streamed partial blocks kept; a second cancel is 409."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=SLOW)
        mid = c.send(conv["id"], "cancel me")["assistant_message"]["id"]
        follower = Follower(server.client(), mid)
        follower.start()
        wait_until(lambda: len(follower.text().split()) >= 5, what="5 streamed tokens")
        row = c.cancel(mid)
        assert row["id"] == mid
        assert row["status"] == "aborted"
        assert row["is_generating"] is False
        assert row["blocks"], "partial blocks are kept"
        follower.join(10)
        assert not follower.is_alive()
        assert follower.error is None, follower.error
        assert follower.fold.done is not None
        assert follower.fold.done.status == "aborted"
        stored = find(c.list_messages(conv["id"]), mid)
        assert stored["status"] == "aborted"
        assert stored["blocks"] == row["blocks"] == blocks_json(follower.fold.blocks)
        assert _state(c, conv["id"]) == "idle"

        with pytest.raises(ApiError) as e:
            c.cancel(mid)
        assert e.value.status == 409
        assert e.value.detail


def test_cancel_answers_409_on_a_completed_message_and_retry_makes_a_version(
    server: Server,
) -> None:
    """A completed message cannot be cancelled (409 with a detail); retry, since versions the
    same as regenerate, answers it again as a new version replacing it on the active path."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=FAST)
        mid = c.send(conv["id"], "done quickly")["assistant_message"]["id"]
        c.follow(mid)
        with pytest.raises(ApiError) as e:
            c.cancel(mid)
        assert e.value.status == 409
        assert e.value.detail
        new = c.retry(mid)["assistant_message"]
        assert (new["version"], new["versions"]) == (2, 2)
        c.follow(new["id"])
        assert [r["id"] for r in c.list_messages(conv["id"])][1:] == [new["id"]]


def test_retry_of_an_aborted_message_completes_a_new_row(server: Server) -> None:
    """retry of an aborted row -> 201 with a new assistant row that completes."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=SLOW)
        mid = c.send(conv["id"], "retry me")["assistant_message"]["id"]
        c.cancel(mid)
        c.patch_conversation(conv["id"], options=FAST)
        new = c.retry(mid)["assistant_message"]
        assert new["id"] != mid
        assert new["role"] == "assistant"
        fold = c.follow(new["id"])
        assert fold.done is not None
        assert fold.done.status == "completed"
        rows = c.list_messages(conv["id"], every_version=True)
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert find(rows, mid)["status"] == "aborted"
        # A new version: the aborted answer is off the active path.
        assert [r["id"] for r in c.list_messages(conv["id"])][1:] == [new["id"]]
        assert find(rows, new["id"])["status"] == "completed"
        assert find(rows, new["id"])["blocks"] == blocks_json(fold.blocks)


def test_send_while_generating_is_409_and_writes_nothing(server: Server) -> None:
    """A second send while the conversation generates -> 409; no row is added."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=SLOW)
        mid = c.send(conv["id"], "first")["assistant_message"]["id"]
        try:
            assert _state(c, conv["id"]) == "generating"
            with pytest.raises(ApiError) as e:
                c.send(conv["id"], "second")
            assert e.value.status == 409
            assert e.value.detail
            assert len(c.list_messages(conv["id"])) == 2
        finally:
            c.cancel(mid)


def test_idempotent_send_with_client_message_id(server: Server) -> None:
    """The same client_message_id again -> 200 with the same rows and no second generation."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=FAST)
        key = str(uuid.uuid4())
        r1 = c.http.post(
            f"/v1/conversations/{conv['id']}/messages",
            json={"content": "once", "client_message_id": key},
        )
        assert r1.status_code == 201, r1.text
        r2 = c.http.post(
            f"/v1/conversations/{conv['id']}/messages",
            json={"content": "once", "client_message_id": key},
        )
        assert r2.status_code == 200, r2.text
        first, again = r1.json(), r2.json()
        assert again["user_message"]["id"] == first["user_message"]["id"]
        assert again["assistant_message"]["id"] == first["assistant_message"]["id"]
        c.follow(first["assistant_message"]["id"])
        # And once the turn finished, still the same rows, still no new generation.
        r3 = c.http.post(
            f"/v1/conversations/{conv['id']}/messages",
            json={"content": "once", "client_message_id": key},
        )
        assert r3.status_code == 200, r3.text
        assert r3.json()["assistant_message"]["id"] == first["assistant_message"]["id"]
        rows = c.list_messages(conv["id"])
        assert [(r["seq"], r["role"]) for r in rows] == [(1, "user"), (2, "assistant")]


def test_clock_tool_loop_stores_each_step_as_its_own_row(server: Server) -> None:
    """tool=clock: rows user, assistant(tool call), tool(result), assistant(text), seq 1..4."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={**FAST, "tool": "clock"})
        sent = c.send(conv["id"], "what time is it?")
        first = c.follow(sent["assistant_message"]["id"])
        assert first.done is not None
        assert first.done.status == "completed"
        rows = wait_until(lambda: _settled(c, conv["id"], 4), what="the tool loop to settle")
        assert [(r["seq"], r["role"]) for r in rows] == [
            (1, "user"),
            (2, "assistant"),
            (3, "tool"),
            (4, "assistant"),
        ]
        call_row, tool_row, answer = rows[1], rows[2], rows[3]
        assert call_row["id"] == sent["assistant_message"]["id"]
        assert call_row["blocks"] == blocks_json(first.blocks)
        calls = [b for b in call_row["blocks"] if b["type"] == "tool_call"]
        assert len(calls) == 1
        assert calls[0]["name"] == "clock"
        assert calls[0]["ready"] is True
        assert tool_row["tool_call_id"] == calls[0]["id"]
        assert tool_row["tool_name"] == "clock"
        assert tool_row["content"]
        assert all(r["status"] == "completed" for r in rows[1:] if r["role"] == "assistant")
        assert any(b["type"] == "text" and b["text"] for b in answer["blocks"])
        # The last step has its own stream; a late subscriber gets its final blocks.
        last = c.follow(answer["id"])
        assert blocks_json(last.blocks) == answer["blocks"]


def test_ask_user_waits_for_tool_results_then_resumes(server: Server) -> None:
    """tool=ask_user leaves the conversation awaiting_input; tool-results resumes it
    (a wrong tool_call_id is a 4xx that writes nothing; send meanwhile is 409)."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={**FAST, "tool": "ask_user"})
        cid = conv["id"]
        mid = c.send(cid, "ask me something")["assistant_message"]["id"]
        c.follow(mid)
        wait_until(lambda: _state(c, cid) == "awaiting_input", what="awaiting_input")
        rows = c.list_messages(cid)
        assert [r["role"] for r in rows] == ["user", "assistant"]
        calls = [b for b in find(rows, mid)["blocks"] if b["type"] == "tool_call"]
        assert len(calls) == 1
        assert calls[0]["name"] == "ask_user"
        assert calls[0]["ready"]
        version = c.get_conversation(cid)["conversation"]["version"]

        with pytest.raises(ApiError) as e:
            c.send(cid, "impatient")
        assert e.value.status == 409

        r = c.http.post(
            f"/v1/messages/{mid}/tool-results",
            json={"tool_call_id": "not-the-call", "content": "blue"},
        )
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["detail"], r.text
        after = c.get_conversation(cid)
        assert after["conversation"]["version"] == version
        assert after["conversation"]["state"] == "awaiting_input"
        assert len(after["messages"]) == 2

        r = c.http.post(
            f"/v1/messages/{mid}/tool-results",
            json={"tool_call_id": calls[0]["id"], "content": "blue"},
        )
        assert r.status_code == 201, r.text
        rows = wait_until(lambda: _settled(c, cid, 4), what="the resumed turn to finish")
        assert [(r["seq"], r["role"]) for r in rows] == [
            (1, "user"),
            (2, "assistant"),
            (3, "tool"),
            (4, "assistant"),
        ]
        assert rows[2]["tool_call_id"] == calls[0]["id"]
        assert rows[2]["content"] == "blue"
        assert rows[3]["status"] == "completed"
        assert any(b["type"] == "text" and b["text"] for b in rows[3]["blocks"])

        # Answering the same call twice is refused.
        r = c.http.post(
            f"/v1/messages/{mid}/tool-results",
            json={"tool_call_id": calls[0]["id"], "content": "again"},
        )
        assert 400 <= r.status_code < 500, r.text
        assert len(c.list_messages(cid)) == 4


def test_provider_failure_after_output_ends_in_error_with_partial_blocks(server: Server) -> None:
    """fail_after=5: the row ends `error` with its error text and the 5 streamed tokens kept."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={**FAST, "fail_after": 5})
        mid = c.send(conv["id"], "fail")["assistant_message"]["id"]
        fold = c.follow(mid)
        assert fold.done is not None
        assert fold.done.status == "error"
        row = find(c.list_messages(conv["id"]), mid)
        assert row["status"] == "error"
        assert isinstance(row["error"], str)
        assert row["error"]
        assert row["blocks"] == blocks_json(fold.blocks)
        assert len(fold.text.split()) == 5
        assert _state(c, conv["id"]) == "idle"
        assert c.retry(mid)["assistant_message"]["id"] != mid


def test_provider_failure_before_output_is_retried_then_ends_in_error(server: Server) -> None:
    """fail_after=0 fails before any output: retried with backoff, then the row is `error`."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={**FAST, "fail_after": 0})
        start = time.monotonic()
        mid = c.send(conv["id"], "fail at once")["assistant_message"]["id"]
        fold = c.follow(mid)
        elapsed = time.monotonic() - start
        assert fold.done is not None
        assert fold.done.status == "error"
        row = find(c.list_messages(conv["id"]), mid)
        assert row["status"] == "error"
        assert row["error"]
        assert row["blocks"] == []
        assert elapsed > 0.2, f"failed after {elapsed:.2f} s: no backoff before giving up"
        assert _state(c, conv["id"]) == "idle"


def test_edit_user_message_sets_edited_content(server: Server) -> None:
    """PUT on a user row sets edited_content/edited_at; on an assistant row it is a 4xx."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=FAST)
        sent = c.send(conv["id"], "typo hre")
        c.follow(sent["assistant_message"]["id"])
        row = c.edit(conv["id"], sent["user_message"]["id"], "typo here")
        assert row["edited_content"] == "typo here"
        assert row["edited_at"]
        assert row["content"] == "typo hre"
        with pytest.raises(ApiError) as e:
            c.edit(conv["id"], sent["assistant_message"]["id"], "nope")
        assert 400 <= e.value.status < 500


def test_conversations_crud_and_pagination_newest_first(server: Server) -> None:
    """Create/list (newest first, cursor)/get/patch/delete; deleted -> 404 everywhere."""
    user = f"pager-{uuid.uuid4().hex[:8]}"
    with server.client(user) as c:
        made = [c.create_conversation(title=f"t{i}", model=DEMO) for i in range(3)]
        page = c.list_conversations(limit=2)
        assert [x["id"] for x in page["items"]] == [made[2]["id"], made[1]["id"]]
        assert page["next"]
        rest = c.list_conversations(limit=2, cursor=page["next"])
        assert [x["id"] for x in rest["items"]] == [made[0]["id"]]
        assert rest["next"] is None

        patched = c.patch_conversation(made[0]["id"], title="renamed", system_prompt="be brief")
        assert patched["title"] == "renamed"
        assert patched["system_prompt"] == "be brief"
        assert patched["version"] > made[0]["version"]
        got = c.get_conversation(made[0]["id"])
        assert got["conversation"]["title"] == "renamed"
        assert got["messages"] == []

        c.delete_conversation(made[0]["id"])
        for call in (
            lambda: c.get_conversation(made[0]["id"]),
            lambda: c.list_messages(made[0]["id"]),
            lambda: c.send(made[0]["id"], "hello?"),
            lambda: c.patch_conversation(made[0]["id"], title="x"),
            lambda: c.delete_conversation(made[0]["id"]),
            lambda: c.export(made[0]["id"]),
        ):
            with pytest.raises(ApiError) as e:
                call()
            assert e.value.status == 404
        assert made[0]["id"] not in [x["id"] for x in c.list_conversations()["items"]]


@pytest.mark.parametrize("lang", ["en-US", "ru-RU", "pl", "xx", "en", "de-CH-1996"])
def test_export_accepts_any_language_tag(server: Server, lang: str) -> None:
    """Export as markdown and JSON with any lang tag -> 200, built from the stored rows."""
    with server.client() as c:
        conv = c.create_conversation(title="export me", model=DEMO, options=FAST)
        sent = c.send(conv["id"], "export this question")
        c.follow(sent["assistant_message"]["id"])
        md = c.http.get(
            f"/v1/conversations/{conv['id']}/export", params={"format": "markdown", "lang": lang}
        )
        assert md.status_code == 200, md.text
        assert md.headers["content-type"].startswith("text/markdown")
        assert "export this question" in md.text
        js = c.http.get(
            f"/v1/conversations/{conv['id']}/export", params={"format": "json", "lang": lang}
        )
        assert js.status_code == 200, js.text
        assert js.headers["content-type"].startswith("application/json")
        assert "export this question" in js.text


def test_async_client_drives_a_turn_like_the_sync_one(server: Server) -> None:
    """AsyncClient against the real server: create, send, follow to done, read back, page,
    export, and its errors are the same ApiError."""

    async def main() -> None:
        async with AsyncClient(server.url, make_token("alice")) as c:
            conv = await c.create_conversation(model=DEMO, options=FAST, title="async")
            cid = conv["id"]
            sent = await c.send(cid, "hello", client_message_id="async-1")
            fold = await c.follow(sent["assistant_message"]["id"])
            assert fold.done is not None
            assert fold.done.status == "completed"
            rows = await c.list_messages(cid)
            assert [r["role"] for r in rows] == ["user", "assistant"]
            assert rows[1]["blocks"] == blocks_json(fold.blocks)
            again = await c.send(cid, "hello", client_message_id="async-1")
            assert again["user_message"]["id"] == sent["user_message"]["id"]
            page = await c.list_conversations(limit=50)
            assert cid in [item["id"] for item in page["items"]]
            assert "hello" in await c.export(cid)
            with pytest.raises(ApiError) as err:
                await c.get_conversation(str(uuid.uuid4()))
            assert err.value.status == 404

    anyio.run(main)


def _in_state(c: Client, cid: str, state: str) -> dict[str, Any] | None:
    """The conversation once it is in ``state`` with no row generating."""
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
        got = wait_until(lambda: _in_state(c, cid, "awaiting_input"), what="a pending question")
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

"""Versions over HTTP: regenerate, edit and resend, select, and everything that follows the
active path (docs/protocol.md, "Versions")."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from turnlog import replay
from turnlog.client import ApiError, AsyncClient, Client, text_of

from .support import DEMO, FAST, Server, make_token, wait_until

pytestmark = pytest.mark.slow

SLOW = {"tokens_per_second": 20, "length": 400}
JSON = dict[str, Any]


def _idle(c: Client, cid: str) -> bool:
    state = c.get_conversation(cid)
    return state["conversation"]["state"] == "idle" and not any(
        r["is_generating"] for r in c.list_messages(cid, every_version=True)
    )


def _settle(c: Client, cid: str) -> list[JSON]:
    wait_until(lambda: _idle(c, cid), timeout=30, what="the conversation idle")
    return c.list_messages(cid)


def _ids(rows: list[JSON]) -> list[str]:
    return [r["id"] for r in rows]


def _is_a_path(rows: list[JSON]) -> None:
    """``rows`` run from a first row down, each the child of the one before it."""
    assert rows[0]["parent_id"] is None
    for a, b in itertools.pairwise(rows):
        assert b["parent_id"] == a["id"]


def _no_cycle(every: list[JSON]) -> None:
    """Every row's parent is an earlier row of the same conversation: no cycle anywhere."""
    seqs = {r["id"]: r["seq"] for r in every}
    for r in every:
        assert r["parent_id"] is None or seqs[r["parent_id"]] < r["seq"]


def test_regenerate_a_completed_answer_then_select_back_and_forth(server: Server) -> None:
    """regenerate -> 201, a sibling of the answer (same parent), made active, numbered 2/2;
    select flips the path; GET …/messages, ?all=true, the conversation and export follow."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        sent = c.send(cid, "tell me a story")
        user, first = sent["user_message"], sent["assistant_message"]
        assert first["parent_id"] == user["id"]
        assert (first["version"], first["versions"]) == (1, 1)
        _settle(c, cid)
        # Longer than the first answer (the demo's text for a prompt is deterministic: a
        # shorter one would be a prefix of it).
        new = c.regenerate(first["id"], options={"length": 80})["assistant_message"]
        assert new["parent_id"] == user["id"]
        assert (new["version"], new["versions"]) == (2, 2)
        rows = _settle(c, cid)
        assert _ids(rows) == [user["id"], new["id"]]
        _is_a_path(rows)
        assert c.get_conversation(cid)["conversation"]["active_leaf_id"] == new["id"]
        every = c.list_messages(cid, every_version=True)
        assert _ids(every) == [user["id"], first["id"], new["id"]]
        assert [(r["version"], r["versions"]) for r in every] == [(1, 1), (1, 2), (2, 2)]
        new_text = text_of(rows[-1]["blocks"])
        first_text = text_of(every[1]["blocks"])
        assert new_text != first_text

        conv = c.select(first["id"])
        assert conv["active_leaf_id"] == first["id"]
        assert _ids(c.list_messages(cid)) == [user["id"], first["id"]]
        assert _ids(c.export(cid, format="json")["messages"]) == [user["id"], first["id"]]
        markdown = c.export(cid)
        assert first_text[:40] in markdown
        assert new_text not in markdown
        c.select(new["id"])
        assert _ids(c.get_conversation(cid)["messages"]) == [user["id"], new["id"]]
        # A send appends to the active leaf.
        nxt = c.send(cid, "and then?")["user_message"]
        assert nxt["parent_id"] == new["id"]
        rows = _settle(c, cid)
        _is_a_path(rows)
        assert len(rows) == 4
        _no_cycle(c.list_messages(cid, every_version=True))


def test_regenerate_an_errored_answer_and_retry_is_the_same(server: Server) -> None:
    """A failed answer regenerates (or retries) into a new version; the failed one leaves
    the timeline instead of staying stacked in it."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO)["id"]
        sent = c.send(cid, "fail please", options={**FAST, "fail_after": 3})
        failed = sent["assistant_message"]
        rows = _settle(c, cid)
        assert rows[-1]["status"] == "error"
        new = c.regenerate(failed["id"], options=FAST)["assistant_message"]
        rows = _settle(c, cid)
        assert _ids(rows) == [sent["user_message"]["id"], new["id"]]
        assert rows[-1]["status"] == "completed"
        # retry is the same operation, on any answer that ends a turn.
        again = c.retry(new["id"])["assistant_message"]
        rows = _settle(c, cid)
        assert _ids(rows) == [sent["user_message"]["id"], again["id"]]
        assert (rows[-1]["version"], rows[-1]["versions"]) == (3, 3)


def test_regenerate_a_multi_step_tool_turn_as_a_whole(server: Server) -> None:
    """A tool turn (call, result, final answer) regenerates from its user message; a step
    inside the turn is 409 with a detail naming the turn's last message."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options={**FAST, "tool": "clock"})["id"]
        sent = c.send(cid, "what time is it?")
        rows = _settle(c, cid)
        assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
        step, last = rows[1], rows[3]
        with pytest.raises(ApiError) as e:
            c.regenerate(step["id"])
        assert e.value.status == 409
        assert last["id"] in e.value.detail
        new = c.regenerate(last["id"])["assistant_message"]
        assert new["parent_id"] == sent["user_message"]["id"]
        rows = _settle(c, cid)
        assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
        assert rows[1]["id"] == new["id"]
        _is_a_path(rows)
        every = c.list_messages(cid, every_version=True)
        assert len(every) == 7
        _no_cycle(every)
        # Back to the first version: the whole first turn.
        c.select(step["id"])
        assert _ids(c.list_messages(cid)) == _ids(every[:4])


def test_edit_and_resend_the_first_message_of_a_long_conversation(server: Server) -> None:
    """PUT … {content, resend: true} -> 201 a new first user row (parent null, 2/2) and its
    answer; selecting the old first row goes back to the whole old path."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        for i in range(4):
            c.send(cid, f"message {i}")
            _settle(c, cid)
        old = c.list_messages(cid)
        assert len(old) == 8
        r = c.http.put(
            f"/v1/conversations/{cid}/messages/{old[0]['id']}",
            json={"content": "message 0, better", "resend": True},
        )
        assert r.status_code == 201, r.text
        answer = r.json()
        user = answer["user_message"]
        assert user["parent_id"] is None
        assert user["content"] == "message 0, better"
        assert (user["version"], user["versions"]) == (2, 2)
        assert answer["assistant_message"]["parent_id"] == user["id"]
        rows = _settle(c, cid)
        assert _ids(rows) == [user["id"], answer["assistant_message"]["id"]]
        # The history sent to the model was the new path only: the demo echoes the prompt.
        assert "message 0, better" in text_of(rows[1]["blocks"])
        assert "message 3" not in text_of(rows[1]["blocks"])
        c.select(old[0]["id"])
        assert _ids(c.list_messages(cid)) == _ids(old)
        # A plain edit (no resend) still only records edited_content.
        edited = c.edit(cid, old[2]["id"], "typo fixed")
        assert edited["edited_content"] == "typo fixed"
        assert _ids(c.list_messages(cid)) == _ids(old)


def test_select_back_and_forth_while_another_version_generates(server: Server) -> None:
    """select is allowed while a version generates (the busy rule still refuses a second
    tail: send, regenerate and resend are 409); the generating version completes off the
    active path and is there when selected again."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        first = c.send(cid, "hello")["assistant_message"]
        _settle(c, cid)
        gen = c.regenerate(first["id"], options=SLOW)["assistant_message"]
        for _ in range(3):
            c.select(first["id"])
            rows = c.list_messages(cid)
            assert rows[-1]["id"] == first["id"]
            assert c.get_conversation(cid)["conversation"]["state"] == "generating"
            c.select(gen["id"])
            assert c.list_messages(cid)[-1]["id"] == gen["id"]
        c.select(first["id"])
        for busy in (
            lambda: c.send(cid, "another"),
            lambda: c.regenerate(first["id"]),
            lambda: c.resend(cid, c.list_messages(cid)[0]["id"], "edited"),
        ):
            with pytest.raises(ApiError) as e:
                busy()
            assert e.value.status == 409
            assert e.value.detail
        c.cancel(gen["id"])
        _settle(c, cid)
        assert c.list_messages(cid)[-1]["id"] == first["id"]
        c.select(gen["id"])
        last = c.list_messages(cid)[-1]
        assert last["id"] == gen["id"]
        assert last["status"] == "aborted"


def _feed_view(frames: list[tuple[str, int, Any]]) -> tuple[JSON, list[str]]:
    """What a feed client shows: rows kept by id, the path walked up from the active leaf."""
    rows: dict[str, JSON] = {}
    conv: JSON = {}
    for event, _, data in frames:
        if event == "snapshot":
            conv = data["conversation"]
            rows.update({m["id"]: m for m in data["messages"]})
        elif event == "message":
            rows[data["message"]["id"]] = data["message"]
        elif event == "conversation":
            conv = data["conversation"]
    path: list[str] = []
    at = conv.get("active_leaf_id")
    while at is not None:
        path.append(at)
        at = rows[at]["parent_id"]
    return conv, path[::-1]


def test_feed_and_snapshot_follow_the_active_path(server: Server) -> None:
    """The feed's snapshot is the active path; a regenerate and a select show up as a
    conversation change plus the rows that became visible, so a client walking parent_id
    from active_leaf_id shows exactly GET …/messages."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        first = c.send(cid, "feed me")["assistant_message"]
        _settle(c, cid)
        second = c.regenerate(first["id"], options={"length": 10})["assistant_message"]
        _settle(c, cid)
        c.select(first["id"])
        frames: list[tuple[str, int, Any]] = []
        opened = threading.Event()
        stop = threading.Event()

        def watch() -> None:
            with server.client(stream_read_timeout=10.0) as feed:
                for item in feed.live(cid):
                    frames.append(item)
                    opened.set()
                    if stop.is_set():
                        return

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        assert opened.wait(15), "no snapshot"
        assert [m["id"] for m in frames[0][2]["messages"]] == _ids(c.list_messages(cid))
        assert second["id"] not in {m["id"] for m in frames[0][2]["messages"]}

        def shows_messages() -> bool:
            return _feed_view(list(frames))[1] == _ids(c.list_messages(cid))

        c.select(second["id"])  # rows the subscriber never saw become visible
        wait_until(shows_messages, timeout=15, what="the feed on the selected path")
        third = c.regenerate(second["id"], options={"length": 14})["assistant_message"]
        _settle(c, cid)
        wait_until(shows_messages, timeout=15, what="the feed on the regenerated path")
        assert _feed_view(list(frames))[1][-1] == third["id"]
        c.select(first["id"])
        wait_until(shows_messages, timeout=15, what="the feed back on the first version")
        ids = [i for _, i, _ in frames]
        assert ids == sorted(ids)
        stop.set()
        c.patch_conversation(cid, title="bye")  # wakes the reader so it can return
        t.join(15)


def test_hostile_versions(server: Server) -> None:
    """Another user's row is 404 for select and regenerate; a user row cannot be
    regenerated (409) nor an assistant row resent (400), each with a detail; bodies are
    strict; nothing written by any of them can make a parent cycle."""
    with server.client() as c, Client(server.url, make_token("mallory")) as m:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        sent = c.send(cid, "mine")
        user, answer = sent["user_message"], sent["assistant_message"]
        _settle(c, cid)
        other = c.create_conversation(model=DEMO, options=FAST)["id"]
        theirs = c.send(other, "elsewhere")["user_message"]
        _settle(c, other)
        for call in (
            lambda: m.select(answer["id"]),
            lambda: m.regenerate(answer["id"]),
            lambda: m.resend(cid, user["id"], "hijack"),
            lambda: c.select(str(uuid.uuid4())),
            lambda: c.regenerate(str(uuid.uuid4())),
            lambda: c.resend(cid, theirs["id"], "wrong conversation"),
        ):
            with pytest.raises(ApiError) as e:
                call()
            assert e.value.status == 404, e.value
            assert e.value.detail
        with pytest.raises(ApiError) as e:
            c.regenerate(user["id"])
        assert e.value.status == 409
        assert "user message" in e.value.detail
        with pytest.raises(ApiError) as e:
            c.resend(cid, answer["id"], "not a user row")
        assert e.value.status == 400
        assert "only user messages" in e.value.detail
        for body in ({"model": 3}, {"parent_id": user["id"]}, [1]):
            r = c.http.post(f"/v1/messages/{answer['id']}/regenerate", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["detail"]
        r = c.http.post(f"/v1/messages/{answer['id']}/select", json={"leaf_id": user["id"]})
        assert r.status_code in (200, 400), r.text  # a body is ignored or refused, never obeyed
        r = c.http.put(
            f"/v1/conversations/{cid}/messages/{user['id']}",
            json={"content": "x", "resend": True, "parent_id": answer["id"]},
        )
        assert r.status_code == 400
        for rows in (
            c.list_messages(cid, every_version=True),
            c.list_messages(other, every_version=True),
        ):
            _no_cycle(rows)
            _is_a_path(rows)


def test_a_turn_after_the_users_answer_regenerates_from_that_answer(server: Server) -> None:
    """In a turn that asked the user (ask_user), the answer after the user's reply is
    regenerated from that reply (the tool row), not from the question: the question and
    the reply stay; a model given is checked (unknown: 400 naming it)."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options={**FAST, "tool": "ask_user"})["id"]
        asking = c.send(cid, "ask me")["assistant_message"]
        wait_until(
            lambda: c.get_conversation(cid)["conversation"]["state"] == "awaiting_input",
            what="the question",
        )
        rows = c.list_messages(cid)
        call = next(b for b in rows[-1]["blocks"] if b["type"] == "tool_call")
        c.tool_result(asking["id"], call["id"], "blue")
        rows = _settle(c, cid)
        assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
        reply, last = rows[2], rows[3]
        with pytest.raises(ApiError) as e:
            c.regenerate(last["id"], model="nowhere:none")
        assert e.value.status == 400
        assert "nowhere" in e.value.detail
        new = c.regenerate(last["id"], model=DEMO)["assistant_message"]
        assert new["parent_id"] == reply["id"]
        assert new["model"] == DEMO
        rows = _settle(c, cid)
        assert _ids(rows) == [*_ids(rows[:3]), new["id"]]
        assert rows[2]["id"] == reply["id"]
        assert rows[3]["status"] == "completed"


def test_replay_rebuilds_every_version_from_the_log(server: Server) -> None:
    """After this module's regenerates, resends and selects (same database): the projection
    is the fold of the log, and a rebuild from the log reads the same."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        first = c.send(cid, "one")["assistant_message"]
        _settle(c, cid)
        c.regenerate(first["id"])
        _settle(c, cid)
        c.select(first["id"])
        before = c.list_messages(cid, every_version=True), c.list_messages(cid)
        report = replay.verify(server.database_url)
        assert report.ok, "\n".join(report.drift)
        replay.rebuild(server.database_url)
        assert (c.list_messages(cid, every_version=True), c.list_messages(cid)) == before


def test_a_repeated_send_shows_its_rows_with_their_versions(server: Server) -> None:
    """The same client_message_id again after its message was edited and resent: 200 with
    the original rows, numbered among their versions now (1 of 2)."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        user = c.send(cid, "once", client_message_id="m-1")["user_message"]
        _settle(c, cid)
        c.resend(cid, user["id"], "twice")
        _settle(c, cid)
        r = c.http.post(
            f"/v1/conversations/{cid}/messages",
            json={"content": "once", "client_message_id": "m-1"},
        )
        assert r.status_code == 200, r.text
        again = r.json()["user_message"]
        assert again["id"] == user["id"]
        assert (again["version"], again["versions"]) == (1, 2)


async def _settle_async(c: AsyncClient, cid: str) -> list[JSON]:
    """``_settle`` for the AsyncClient: the active path once nothing generates."""
    with anyio.fail_after(30):
        while True:
            state = await c.get_conversation(cid)
            every = await c.list_messages(cid, every_version=True)
            if state["conversation"]["state"] == "idle" and not any(
                r["is_generating"] for r in every
            ):
                return await c.list_messages(cid)
            await anyio.sleep(0.05)


def test_async_client_versions_like_the_sync_one(server: Server) -> None:
    """AsyncClient against the real server: regenerate (options, model), select, resend and
    list_messages(every_version=True) answer as Client's do; their refusals are the same
    ApiError (409 regenerating a user row, 400 resending an answer, 404 an unknown id)."""

    async def main() -> None:
        async with AsyncClient(server.url, make_token("alice")) as c:
            cid = (await c.create_conversation(model=DEMO, options=FAST))["id"]
            sent = await c.send(cid, "tell me a story")
            user, first = sent["user_message"], sent["assistant_message"]
            await _settle_async(c, cid)
            regenerated = await c.regenerate(first["id"], options={"length": 80}, model=DEMO)
            new = regenerated["assistant_message"]
            assert new["parent_id"] == user["id"]
            assert (new["version"], new["versions"]) == (2, 2)
            assert _ids(await _settle_async(c, cid)) == [user["id"], new["id"]]
            every = await c.list_messages(cid, every_version=True)
            assert _ids(every) == [user["id"], first["id"], new["id"]]

            conv = await c.select(first["id"])
            assert conv["active_leaf_id"] == first["id"]
            assert _ids(await c.list_messages(cid)) == [user["id"], first["id"]]

            resent = await c.resend(cid, user["id"], "tell me another story")
            user2, answer2 = resent["user_message"], resent["assistant_message"]
            assert user2["parent_id"] is None
            assert user2["content"] == "tell me another story"
            assert (user2["version"], user2["versions"]) == (2, 2)
            assert answer2["parent_id"] == user2["id"]
            rows = await _settle_async(c, cid)
            assert _ids(rows) == [user2["id"], answer2["id"]]
            _is_a_path(rows)
            await c.select(new["id"])
            assert _ids(await c.list_messages(cid)) == [user["id"], new["id"]]
            _no_cycle(await c.list_messages(cid, every_version=True))

            refusals: list[tuple[int, str, Callable[[], Awaitable[JSON]]]] = [
                (409, "user message", lambda: c.regenerate(user2["id"])),
                (400, "only user messages", lambda: c.resend(cid, answer2["id"], "no")),
                (404, "not found", lambda: c.select(str(uuid.uuid4()))),
            ]
            for status, words, call in refusals:
                with pytest.raises(ApiError) as e:
                    await call()
                assert e.value.status == status, e.value
                assert words in e.value.detail

    anyio.run(main)

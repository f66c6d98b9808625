"""``turnlog chat``, the terminal client, driven through stdin against a real server (§6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from turnlog.client import text_of

from .support import DEMO, FAST, JWT_SECRET, Server

pytestmark = pytest.mark.slow


def _chat(
    server: Server, tmp_path: Path, stdin: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
    env.update(TURNLOG_JWT_SECRET=JWT_SECRET, TURNLOG_DATA_DIR=str(tmp_path))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "turnlog.cli",
            "chat",
            "--url",
            server.url,
            "--user",
            "alice",
            *extra,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_chat_sends_a_line_and_prints_the_streamed_answer(server: Server, tmp_path: Path) -> None:
    """A line on stdin is sent; the streamed answer is printed; /quit exits 0; it says
    which secret signed its token."""
    done = _chat(server, tmp_path, "hello from the terminal\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert "signed with the secret in TURNLOG_JWT_SECRET" in done.stderr
    match = re.search(r"conversation ([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout
    with server.client() as c:
        rows = c.list_messages(match.group(1))
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert rows[0]["content"] == "hello from the terminal"
    assert rows[1]["status"] == "completed"
    assert text_of(rows[1]["blocks"]) in done.stdout


def test_chat_opens_an_existing_conversation_and_retries(server: Server, tmp_path: Path) -> None:
    """--conversation prints the stored history; /retry of a completed answer answers it
    again as a second version (shown), and the next line is sent after that version."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        mid = c.send(cid, "an earlier question")["assistant_message"]["id"]
        c.follow(mid)
    done = _chat(server, tmp_path, "/retry\nsecond question\n/quit\n", "--conversation", cid)
    assert done.returncode == 0, done.stderr
    assert "you: an earlier question" in done.stdout
    assert not re.search(r"error \d{3}", done.stdout), done.stdout
    assert "[version 2/2]" in done.stdout
    with server.client() as c:
        rows = c.list_messages(cid)
        every = c.list_messages(cid, every_version=True)
    assert [r["role"] for r in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[1]["id"] != mid
    assert (rows[1]["version"], rows[1]["versions"]) == (2, 2)
    assert mid in {r["id"] for r in every}  # the first answer is kept as version 1
    assert rows[1]["status"] == rows[3]["status"] == "completed"
    assert text_of(rows[1]["blocks"]) in done.stdout
    assert text_of(rows[3]["blocks"]) in done.stdout


def test_chat_opened_on_a_generating_answer_follows_it_live(server: Server, tmp_path: Path) -> None:
    """--conversation on a conversation whose answer is being written streams that answer
    as it comes and prints all of it, exactly as when the chat sent the question."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options={"tokens_per_second": 20, "length": 40})[
            "id"
        ]
        mid = c.send(cid, "a slow question")["assistant_message"]["id"]
        done = _chat(server, tmp_path, "/quit\n", "--conversation", cid)
        c.follow(mid)
        rows = c.list_messages(cid)
    assert done.returncode == 0, done.stderr
    assert "you: a slow question" in done.stdout
    assert rows[1]["status"] == "completed"
    assert text_of(rows[1]["blocks"]) in done.stdout


def test_chat_lists_prompt_commands_on_slash_and_sends_them(server: Server, tmp_path: Path) -> None:
    """`/` alone lists the chat's commands and the user's prompts; `/NAME` sends one."""
    with server.http("alice") as h:
        r = h.put("/v1/prompts/cli-haiku", json={"description": "a haiku", "template": "Haiku"})
        assert r.status_code in (200, 201), r.text
    done = _chat(server, tmp_path, "/\n/cli-haiku\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert "/cli-haiku   a haiku  (prompt)" in done.stdout
    assert "/retry" in done.stdout
    match = re.search(r"conversation ([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout
    with server.client() as c:
        rows = c.list_messages(match.group(1))
    assert rows[0]["command"] == {"name": "cli-haiku", "input": ""}

"""``turnlog chat`` in a pseudo-terminal, its screen read back with pyte (§6).

pexpect runs the chat in a real pty (100x30), so rich sees a terminal and the tty modes
(no echo while an answer streams, Ctrl-C as SIGINT) are the real ones; pyte plays the
bytes onto a virtual screen, which the test reads like a user would.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest

from turnlog.client import Client, text_of

from .support import DEMO, FAST, JWT_SECRET, Server, wait_until

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 100, 30
SLOW = {"tokens_per_second": 12, "length": 400}
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


class Terminal:
    """A chat process in a pty, its output played onto a pyte screen and kept whole."""

    def __init__(self, server: Server, tmp: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
        env.update(
            TURNLOG_JWT_SECRET=JWT_SECRET,
            TURNLOG_DATA_DIR=str(tmp),
            TERM="xterm-256color",
            COLUMNS=str(WIDTH),
            LINES=str(HEIGHT),
        )
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "turnlog.cli", "chat", "--url", server.url, "--user", "alice", *args],
            env=env,
            dimensions=(HEIGHT, WIDTH),
            encoding="utf-8",
            timeout=5,
            preexec_fn=_as_from_a_shell,
        )
        self.screen = pyte.Screen(WIDTH, HEIGHT)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""

    def pump(self) -> None:
        """Read what the chat printed, for at most a moment (a stream never pauses)."""
        until = time.monotonic() + 0.2
        try:
            while time.monotonic() < until:
                chunk = self.child.read_nonblocking(65536, timeout=0.05)
                self.raw += chunk
                self.stream.feed(chunk)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass

    def text(self) -> str:
        """What the screen shows now."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def transcript(self) -> str:
        """Everything printed so far, escape sequences stripped."""
        return _ANSI.sub("", self.raw)

    def wait(self, probe: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        def seen() -> str | None:
            self.pump()
            return self.text() if probe(self.text()) else None

        try:
            return wait_until(seen, timeout=timeout, interval=0.05, what=what)
        except AssertionError:
            raise AssertionError(f"{what}; the screen:\n{self.text()}") from None

    def prompt(self) -> str:
        """Wait for the `you ›` prompt on the last non-empty line."""
        return self.wait(lambda t: _last_line(t).startswith("you ›"), "the you › prompt")

    def type(self, text: str) -> None:
        self.child.send(text)


def _as_from_a_shell() -> None:
    """In the chat's process before exec: Ctrl-C's SIGINT handled by default, as in a job
    a terminal's shell starts. A suite started in the background (``cmd &`` in a script,
    nohup) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _rows(c: Client, cid: str) -> list[dict[str, Any]]:
    return c.list_messages(cid)


def _idle(c: Client, cid: str) -> bool:
    got = c.get_conversation(cid)
    return got["conversation"]["state"] == "idle" and not any(
        r["is_generating"] for r in got["messages"]
    )


def test_chat_in_a_terminal(server: Server, tmp_path: Path) -> None:
    """Send and stream; a command typed mid-answer is neither shown nor run; Ctrl-C stops
    an answer; /retry answers again, shown once and wrapped at word boundaries; a question
    is answered at its prompt, another abandoned with Ctrl-C; a resumed chat shows it all."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=SLOW)["id"]
        term = Terminal(server, tmp_path, "--conversation", cid)
        try:
            term.prompt()

            # Send, stream; type a command during the answer; stop it with Ctrl-C.
            term.type("tell me everything\r")
            term.wait(lambda t: "Demo answer" in t, "the answer streaming")
            term.type("/retry\r")
            time.sleep(0.3)
            term.pump()
            answer_part = term.text().split("you › tell me everything", 1)[1]
            assert "/retry" not in answer_part, "a command typed mid-answer was echoed"
            term.child.sendintr()
            term.wait(lambda t: "[stopped]" in t, "the stopped answer")
            term.prompt()
            wait_until(lambda: _idle(c, cid), what="the conversation idle after Ctrl-C")
            rows = _rows(c, cid)
            assert [r["role"] for r in rows] == ["user", "assistant"], "the /retry ran"
            assert rows[1]["status"] == "aborted"

            # /retry acts on that stopped row; the answer is shown once, wrapped by words.
            c.patch_conversation(cid, options=FAST)
            mark = len(term.raw)
            term.type("/retry\r")
            term.wait(lambda t: term.transcript().count("you ›") >= 3, "the answer to /retry")
            term.prompt()
            rows = _rows(c, cid)
            assert rows[-1]["status"] == "completed"
            answer = text_of(rows[-1]["blocks"])
            words = set(term.text().split())
            assert all(w in words for w in answer.split()), "a word was broken by the wrap"
            assert _ANSI.sub("", term.raw[mark:]).count("assistant:") == 1

            # A new turn prints only itself; a command typed while it streams is dropped.
            c.patch_conversation(cid, options={"tokens_per_second": 40, "length": 120})
            mark = len(term.raw)
            term.type("second question\r")
            term.wait(lambda t: "“second question”" in t, "the second answer streaming")
            term.type("/cancel\r")
            term.wait(lambda t: term.transcript().count("you ›") >= 4, "the second answer")
            wait_until(lambda: _idle(c, cid), what="idle")
            after = _ANSI.sub("", term.raw[mark:])
            assert after.count("assistant:") == 1
            assert "ignored" in after
            assert "/cancel" not in after
            assert _rows(c, cid)[-1]["status"] == "completed", "the typed /cancel ran"

            # A question answered at its prompt.
            c.patch_conversation(cid, options={**FAST, "tool": "ask_user"})
            term.type("ask me\r")
            shown = term.wait(lambda t: _last_line(t).startswith("answer ›"), "the question")
            assert "? What should I focus on" in shown
            assert "{'question'" not in shown
            term.type("the wire format\r")
            term.prompt()
            wait_until(lambda: _idle(c, cid), what="idle after the answer")
            rows = _rows(c, cid)
            assert any(r["role"] == "tool" and r["content"] == "the wire format" for r in rows)
            assert rows[-1]["role"] == "assistant"
            assert rows[-1]["status"] == "completed"

            # A question abandoned with Ctrl-C: withdrawn, the conversation free again.
            term.type("ask again\r")
            term.wait(lambda t: _last_line(t).startswith("answer ›"), "the second question")
            term.child.sendintr()
            term.wait(lambda t: "[question withdrawn]" in t, "the withdrawal")
            term.prompt()
            assert "Traceback" not in term.transcript()
            assert c.get_conversation(cid)["conversation"]["state"] == "idle"

            # /edit: the last question replaced by a new version, answered.
            c.patch_conversation(cid, options=FAST)
            prompts = term.transcript().count("you ›")
            term.type("/edit tell me less\r")
            term.wait(lambda t: term.transcript().count("you ›") > prompts, "the edited answer")
            wait_until(lambda: _idle(c, cid), what="idle after /edit")
            rows = _rows(c, cid)
            assert rows[-2]["content"] == "tell me less"
            assert (rows[-2]["version"], rows[-2]["versions"]) == (2, 2)
            assert "[version 2/2]" in term.transcript()

            term.type("/quit\r")
            term.child.expect(pexpect.EOF, timeout=10)
        finally:
            term.child.close(force=True)
        assert term.child.exitstatus == 0, term.transcript()[-3000:]

        # Resume: the history, questions and their answers included, with speaker labels.
        again = Terminal(server, tmp_path, "--conversation", cid)
        try:
            again.prompt()
            history = again.transcript()
            for expected in (
                "you: tell me everything",  # its stopped answer: replaced by /retry's version
                "you: ask me",
                "? What should I focus on",
                "answer: the wire format",
                "you: tell me less",  # the /edit version of "ask again" (its question withdrawn)
                "assistant:",
            ):
                assert expected in history, f"{expected!r} not in:\n{history}"
            again.type("/quit\r")
            again.child.expect(pexpect.EOF, timeout=10)
        finally:
            again.child.close(force=True)

"""``turnlog chat``: the terminal chat, built on the reference client (``turnlog.client``).

Each turn is shown once: the answer streams as plain wrapped text (the last lines of it,
redrawn in place) and, when it completes, is printed once as rendered Markdown (rich). A
server-tool step shows its tool call and result; a question (``ask_user``) is asked at an
``answer ›`` prompt. While an answer streams the keyboard is not echoed and whatever was
typed is dropped afterwards, so a command typed then cannot end up in the answer or run
against the wrong row. Ctrl-C while an answer streams cancels it; at the ``answer ›``
prompt it withdraws the question (the conversation is free again); at the ``you ›`` prompt
it leaves. ``/retry`` (or ``/regenerate``), ``/edit`` and ``/cancel`` always act on the
conversation's newest row of that kind on its active path, read from the server when typed;
a new version is shown from the row it replaces on.

Without a terminal (stdin or stdout piped) it reads lines and prints plain text.
"""

from __future__ import annotations

import contextlib
import json
import select
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import httpx
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text
from turnlog_reducer import Done, ReasoningBlock, TextBlock, ToolCallBlock

from turnlog.client import JSON, ApiError, Client, MessageFold

if TYPE_CHECKING:
    import argparse

    from turnlog.config import Settings

__all__ = ["SLASH_COMMANDS", "ChatApp", "cli_chat"]

SLASH_COMMANDS: Final = {
    "/retry": "answer the last message again (a new version of it)",
    "/regenerate": "the same: a new version of the last answer",
    "/edit TEXT": "replace your last message with TEXT (a new version) and answer it",
    "/cancel": "stop the answer being generated, or withdraw a pending question",
    "/help": "show these commands and the prompt commands (so does / alone)",
    "/quit": "leave (Ctrl-D or Ctrl-C at the prompt too)",
}
HELP: Final = (
    "commands: " + "  ".join(SLASH_COMMANDS) + "   (Ctrl-C while an answer streams stops it)"
)
YOU: Final = "you › "
ANSWER: Final = "answer › "
APPROVE: Final = "run it? [y/n] › "


class ChatApp:
    """One conversation in the terminal."""

    def __init__(self, client: Client, console: Console, cid: str) -> None:
        self.client = client
        self.console = console
        self.cid = cid
        # Every row already on screen, so that a turn never prints an earlier one again.
        self.shown: set[str] = set()
        self.tty = console.is_terminal and sys.stdin.isatty()

    # -- history -------------------------------------------------------------------------

    def show_history(self) -> None:
        """Print the stored conversation: every row, tool results and questions too."""
        state = self.client.get_conversation(self.cid)
        rows: list[JSON] = state["messages"]
        questions = _questions(rows)
        for row in rows:
            self._print_row(row, questions)
        conv = state["conversation"]
        if conv["state"] != "idle":
            self.follow_turn()

    def _print_row(self, row: JSON, questions: dict[str, str]) -> None:
        if row["role"] == "assistant" and row["is_generating"]:
            # Not shown yet: follow_turn streams it live, as after a send.
            return
        self.shown.add(row["id"])
        match row["role"]:
            case "user":
                text = row["edited_content"] or row["content"] or ""
                self.console.print(Text("you: ", style="bold cyan") + Text(text))
            case "assistant":
                self._label()
                self._print_blocks(row["blocks"], final=True)
                self._status(row["status"], row.get("error"))
            case "tool":
                name = row["tool_name"] or "tool"
                content = row["content"] or ""
                if row["tool_call_id"] in questions and content.startswith("cancelled:"):
                    line = Text("[question withdrawn]", style="red")
                elif row["tool_call_id"] in questions:
                    line = Text("answer: ", style="bold yellow") + Text(content)
                else:
                    line = Text(f"⚙ {name} → ", style="dim") + Text(content)
                self.console.print(line)
            case _:
                self.console.print(
                    Text(f"{row['role']}: ", style="dim") + Text(row["content"] or "")
                )

    def _label(self) -> None:
        self.console.print(Text("assistant:", style="bold magenta"))

    def _print_blocks(self, blocks: Any, *, final: bool) -> None:
        for part in _parts(blocks):
            if isinstance(part, str):
                if self.tty and final:
                    self.console.print(Markdown(part))
                else:
                    self.console.print(part, markup=False, highlight=False, soft_wrap=True)
            else:
                self.console.print(part)

    def _status(self, status: str | None, error: str | None = None) -> None:
        if status in (None, "completed", "generating"):
            return
        words = {"aborted": "stopped", "interrupted": "interrupted", "error": "failed"}
        note = f"[{words.get(status, status)}{': ' + error if error else ''}]"
        self.console.print(Text(note, style="red"))

    # -- a turn --------------------------------------------------------------------------

    def send(self, line: str) -> None:
        sent = self.client.send(self.cid, line)
        self.shown.add(sent["user_message"]["id"])
        self.follow_turn()

    def follow_turn(self) -> None:
        """Show the turn's rows as they come (answers streamed, tool results, questions)
        until the conversation is idle."""
        while True:
            state = self.client.get_conversation(self.cid)
            rows: list[JSON] = state["messages"]
            new = [r for r in rows if r["id"] not in self.shown]
            questions = _questions(rows)
            if new:
                row = new[0]
                if row["role"] == "assistant" and row["is_generating"]:
                    self.shown.add(row["id"])
                    if not self.watch(row["id"]):
                        return  # stopped with Ctrl-C
                else:
                    self._print_row(row, questions)
                continue
            conv = state["conversation"]["state"]
            if conv == "awaiting_input":
                if not self.ask(rows, questions):
                    return
                continue
            if conv == "generating":
                # The next row is about to appear (or another client runs one): look again.
                time.sleep(0.2)
                continue
            return

    def watch(self, mid: str) -> bool:
        """Stream ``mid``'s answer; False if the user stopped it with Ctrl-C."""
        fold = MessageFold()
        self._label()
        stopped = False
        with (
            self._quiet(),
            Live(
                Text(""),
                console=self.console,
                transient=True,
                auto_refresh=False,
                vertical_overflow="crop",
            ) as live,
        ):
            try:
                for item in self.client.stream_message(mid):
                    fold.feed(item)
                    if self.tty:
                        live.update(self._tail(fold), refresh=True)
            except KeyboardInterrupt:
                stopped = True
                with contextlib.suppress(ApiError, httpx.HTTPError):
                    self.client.cancel(mid)
        if stopped:
            row = self._row(mid)
            blocks = row["blocks"] if row is not None else fold.blocks
            self._print_blocks(blocks, final=True)
            self._status("aborted")
            return False
        self._print_blocks(fold.blocks, final=True)
        done: Done | None = fold.done
        self._status(done.status if done else None, done.error if done else None)
        return True

    def _tail(self, fold: MessageFold) -> Text:
        """The last screenful of the answer so far, as plain text (word-wrapped by rich)."""
        lines = max(3, self.console.size.height - 3)
        shown: list[Text] = []
        for part in _parts(fold.blocks):
            shown.append(Text(part) if isinstance(part, str) else part)
        text = Text("\n").join(shown)
        wrapped = list(text.wrap(self.console, self.console.size.width))
        return Text("\n").join(wrapped[-lines:])

    def ask(self, rows: list[JSON], questions: dict[str, str]) -> bool:
        """Ask each open question; False if the user withdrew them (Ctrl-C / Ctrl-D)."""
        answered = {r["tool_call_id"] for r in rows if r["role"] == "tool"}
        asking = next(r for r in reversed(rows) if r["role"] == "assistant")
        for call_id in questions:
            if call_id in answered:
                continue
            try:
                reply = input(ANSWER)
            except (KeyboardInterrupt, EOFError):
                self.console.print()
                self.client.cancel(asking["id"])
                self.console.print(Text("[question withdrawn]", style="red"))
                return False
            result = self.client.tool_result(asking["id"], call_id, reply)
            self.shown.add(result["tool_message"]["id"])
        return self.approve(rows, asking, answered | set(questions))

    def approve(self, rows: list[JSON], asking: JSON, answered: set[str]) -> bool:
        """Ask y/n for each call of ``asking`` that waits for approval; False if the user
        withdrew them, or a call waits for something a terminal cannot give (a client
        tool's output)."""
        waiting = [
            b
            for b in asking.get("blocks") or []
            if isinstance(b, dict) and b.get("type") == "tool_call" and b["id"] not in answered
        ]
        if not waiting:
            return True
        needs = {t["name"] for t in self.client.tools()["items"] if t["approval"]}
        for call in waiting:
            if call["name"] not in needs:
                self.console.print(
                    Text(f"[{call['name']} waits for its client; answer it there]", style="red")
                )
                return False
            arguments = json.dumps(call.get("arguments"), ensure_ascii=False)
            self.console.print(Text(f"[{call['name']} {arguments}]", style="yellow"))
            try:
                reply = input(APPROVE).strip().lower()
            except (KeyboardInterrupt, EOFError):
                self.console.print()
                self.client.cancel(asking["id"])
                self.console.print(Text("[call withdrawn]", style="red"))
                return False
            yes = reply in ("y", "yes")
            self.client.tool_approval(
                asking["id"], call["id"], yes, None if yes else "the user said no"
            )
        return True

    def _row(self, mid: str) -> JSON | None:
        rows: list[JSON] = self.client.list_messages(self.cid)
        return next((r for r in rows if r["id"] == mid), None)

    # -- commands ------------------------------------------------------------------------

    def newest_assistant(self) -> JSON | None:
        rows: list[JSON] = self.client.list_messages(self.cid)
        return next((r for r in reversed(rows) if r["role"] == "assistant"), None)

    def retry(self) -> None:
        row = self.newest_assistant()
        if row is None:
            self.console.print("nothing to regenerate yet")
            return
        new = self.client.regenerate(row["id"])["assistant_message"]
        self._version(new)
        self.follow_turn()

    def edit(self, text: str) -> None:
        rows: list[JSON] = self.client.list_messages(self.cid)
        row = next((r for r in reversed(rows) if r["role"] == "user"), None)
        if row is None:
            self.console.print("nothing to edit yet")
            return
        sent = self.client.resend(self.cid, row["id"], text)
        self.shown.add(sent["user_message"]["id"])
        self._version(sent["user_message"])
        self.follow_turn()

    def _version(self, row: JSON) -> None:
        self.console.print(
            Text(f"[version {row['version']}/{row['versions']}]", style="dim"), highlight=False
        )

    def cancel(self) -> None:
        row = self.newest_assistant()
        if row is None:
            self.console.print("nothing to cancel")
            return
        self.client.cancel(row["id"])
        self.console.print(Text("[cancelled]", style="red"))

    def run(self) -> int:
        self.console.print(f"conversation {self.cid}\n{HELP}", highlight=False)
        while True:
            try:
                line = input(YOU).strip()
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return 0
            if not line:
                continue
            try:
                match line:
                    case "/quit" | "/exit":
                        return 0
                    case "/help" | "/":
                        self.list_commands()
                    case "/retry" | "/regenerate":
                        self.retry()
                    case _ if line.startswith("/edit "):
                        self.edit(line.removeprefix("/edit ").strip())
                    case "/cancel":
                        self.cancel()
                    case _ if line.startswith("/") and " " not in line:
                        if line[1:] in {p["name"] for p in self.client.list_prompts()}:
                            self.send(line)  # a prompt command with no input
                        else:
                            self.console.print(f"unknown command {line}; {HELP}", highlight=False)
                    case _:
                        self.send(line)
            except ApiError as e:
                self.console.print(Text(f"error {e.status}: {e.detail}", style="red"))
            except httpx.HTTPError as e:
                self.console.print(Text(f"connection error: {e}", style="red"))

    def list_commands(self) -> None:
        """The chat's own commands, then the prompt commands (`/NAME text` sends a prompt's
        template with the text in it)."""
        for name, what in SLASH_COMMANDS.items():
            self.console.print(f"  {name:12} {what}", highlight=False)
        for p in self.client.list_prompts():
            what = p["description"] or p["template"].splitlines()[0][:60]
            self.console.print(f"  /{p['name']:11} {what}  (prompt)", highlight=False)

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """While an answer streams: no echo of typed keys, and what was typed is dropped
        afterwards (Ctrl-C still interrupts)."""
        if not self.tty:
            yield
            return
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ECHO | termios.ICANON)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        try:
            yield
        finally:
            typed = select.select([fd], [], [], 0)[0]
            termios.tcflush(fd, termios.TCIFLUSH)
            termios.tcsetattr(fd, termios.TCSANOW, saved)
            if typed:
                self.console.print(
                    Text("(what you typed during the answer was ignored)", style="dim")
                )


def _questions(rows: list[JSON]) -> dict[str, str]:
    """Every ask_user call in the conversation: its id and the question's text."""
    out: dict[str, str] = {}
    for row in rows:
        if row["role"] != "assistant":
            continue
        for block in row["blocks"]:
            if block.get("type") == "tool_call" and block.get("name") == "ask_user":
                out[block["id"]] = _question_text(block.get("arguments"))
    return out


def _question_text(arguments: Any) -> str:
    if isinstance(arguments, dict) and isinstance(arguments.get("question"), str):
        return str(arguments["question"])
    return json.dumps(arguments, ensure_ascii=False)


def _parts(blocks: Any) -> list[str | Text]:
    """An answer's blocks for display: runs of text as one string (Markdown), a tool call
    or reasoning as a styled line."""
    parts: list[str | Text] = []
    for block in blocks:
        kind, data = _kind(block)
        if kind == "text":
            if parts and isinstance(parts[-1], str):
                parts[-1] += data["text"]
            else:
                parts.append(data["text"])
        elif kind == "reasoning" and data.get("text"):
            parts.append(Text(f"(thinking) {data['text']}", style="dim italic"))
        elif kind == "tool_call" and data.get("name") == "ask_user":
            question = _question_text(data.get("arguments"))
            parts.append(Text("? ", style="bold yellow") + Text(question))
        elif kind == "tool_call":
            args = data.get("arguments")
            shown = "" if args in (None, {}) else json.dumps(args, ensure_ascii=False)
            parts.append(Text(f"⚙ {data.get('name')}({shown})", style="dim"))
    return parts


def _kind(block: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(block, dict):
        return str(block.get("type")), block
    if isinstance(block, TextBlock):
        return "text", {"text": block.text}
    if isinstance(block, ReasoningBlock):
        return "reasoning", {"text": block.text}
    if isinstance(block, ToolCallBlock):
        return "tool_call", {"name": block.name, "arguments": block.arguments}
    return "other", {}


def cli_chat(settings: Settings, args: argparse.Namespace) -> int:
    """``turnlog chat``: a conversation in the terminal."""
    from turnlog.http.auth import NoSecret, load_secret, make_token, secret_source

    console = Console(highlight=False)
    try:
        # Never a new secret: the server would refuse a token signed with it.
        token = make_token(load_secret(settings, create=False), args.user, 24 * 3600)
    except NoSecret as exc:
        print(f"turnlog chat: {exc}", file=sys.stderr)
        return 1
    print(
        f"turnlog chat: {args.url} as user {args.user!r}, token signed with "
        f"{secret_source(settings)}",
        file=sys.stderr,
    )
    with Client(args.url, token) as client:
        try:
            if args.conversation:
                app = ChatApp(client, console, args.conversation)
                app.show_history()
            else:
                cid = str(client.create_conversation(title="turnlog chat")["id"])
                app = ChatApp(client, console, cid)
        except ApiError as e:
            print(f"turnlog chat: error {e.status}: {e.detail}", file=sys.stderr)
            if e.status == 401:
                print(
                    "turnlog chat: run it from the directory of `turnlog serve` (same "
                    "TURNLOG_DATA_DIR) or with the same TURNLOG_JWT_SECRET",
                    file=sys.stderr,
                )
            return 1
        except httpx.HTTPError as e:
            print(f"turnlog chat: cannot reach {args.url}: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        return app.run()

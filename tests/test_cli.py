"""The ``turnlog`` command's help, version and what it says about its secret (§6)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from turnlog import __version__
from turnlog.chat_cli import SLASH_COMMANDS
from turnlog.cli import _parser


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
    return subprocess.run(
        [sys.executable, "-m", "turnlog.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
    )


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_command_and_option_has_help_and_none_points_at_repo_files() -> None:
    """Every subcommand and option says what it is; no help names a file users lack."""
    for parser in _parsers(_parser()):
        text = parser.format_help()
        assert ".md" not in text, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest}"
            elif action.help != argparse.SUPPRESS:
                assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_version_and_chat_help_lists_the_slash_commands() -> None:
    """`turnlog --version` prints the version; `turnlog chat --help` lists /commands."""
    done = _run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"turnlog {__version__}"
    done = _run("chat", "--help")
    assert done.returncode == 0
    for name in SLASH_COMMANDS:
        assert name in done.stdout


def test_token_says_which_secret_signed_it(tmp_path: Path) -> None:
    """The token alone on stdout; on stderr, the secret's file in the data dir, or the
    environment variable."""
    (tmp_path / "jwt-secret").write_text("t" * 40 + "\n")
    done = _run("token", "--user", "u1", env={"TURNLOG_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert str(tmp_path / "jwt-secret") in done.stderr
    done = _run("token", "--user", "u1", env={"TURNLOG_JWT_SECRET": "s" * 40})
    assert "TURNLOG_JWT_SECRET" in done.stderr
    assert "s" * 40 not in done.stderr + done.stdout.replace(done.stdout.strip(), "")


def test_token_without_a_secret_explains_and_creates_one_only_when_asked(tmp_path: Path) -> None:
    """In a data dir without a secret, `turnlog token` exits 1 saying that `turnlog serve`
    creates it and which data dir it looked in, and creates nothing; --create-secret makes
    one there and prints a token."""
    env = {"TURNLOG_DATA_DIR": str(tmp_path / "elsewhere")}
    done = _run("token", "--user", "u1", env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "turnlog serve" in done.stderr
    assert str(tmp_path / "elsewhere") in done.stderr
    assert "--create-secret" in done.stderr
    assert not (tmp_path / "elsewhere" / "jwt-secret").exists()
    done = _run("token", "--user", "u1", "--create-secret", env=env)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert (tmp_path / "elsewhere" / "jwt-secret").exists()


def test_serve_with_a_default_model_that_cannot_exist_stops_naming_it(tmp_path: Path) -> None:
    """`TURNLOG_DEFAULT_MODEL=nope:x turnlog serve` stops at once (exit 2), naming the model
    and the variable, before it starts a database or listens."""
    env = {
        "TURNLOG_DATA_DIR": str(tmp_path),
        "TURNLOG_DEFAULT_MODEL": "nope:x",
        # Nobody listens there: a server that went on would fail later, on the database.
        "TURNLOG_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
    }
    done = _run("serve", "--port", "0", env=env)
    assert done.returncode == 2, done.stderr
    assert "TURNLOG_DEFAULT_MODEL" in done.stderr
    assert "'nope:x'" in done.stderr
    assert "database" not in done.stderr.lower()

"""turnlog: an event-sourced generation backend for AI chat.

Each subcommand's work lives beside its concept; this module only parses arguments and
imports the implementing module lazily, so ``turnlog token`` does not pay for litestar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from turnlog.config import Settings

_ENVIRONMENT = """\
environment:
  TURNLOG_DATA_DIR     where the embedded database and the token secret live (./.turnlog)
  TURNLOG_DATABASE_URL an external PostgreSQL instead of the embedded one
  TURNLOG_JWT_SECRET   the token secret (else generated once into the data dir)
  TURNLOG_DEFAULT_MODEL, TURNLOG_CONFIG (providers, models, access), TURNLOG_CORS_ORIGINS,
  TURNLOG_CHECKPOINT_S, TURNLOG_HEARTBEAT_S, TURNLOG_MAX_MESSAGE_CHARS, TURNLOG_MAX_BODY_BYTES,
  TURNLOG_MAX_CONCURRENT_GENERATIONS, TURNLOG_MAX_SENDS_PER_MINUTE, TURNLOG_LOG_LEVEL,
  OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY (and their *_BASE_URL)"""


def _parser() -> argparse.ArgumentParser:
    from turnlog import __version__
    from turnlog.chat_cli import SLASH_COMMANDS

    p = argparse.ArgumentParser(
        prog="turnlog",
        description=__doc__.splitlines()[0],
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"turnlog {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the HTTP server",
        description="Run the HTTP server (embedded PostgreSQL unless TURNLOG_DATABASE_URL "
        "is set). It prints a bearer token, the web chat's URL and its pid, which it also "
        "writes to DATA_DIR/serve.pid.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    # Set by `serve --workers N` for its workers: the listening socket they inherit.
    serve.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)

    token = sub.add_parser(
        "token",
        help="print a bearer token for a user",
        description="Print a bearer token, alone on one line; it is valid for servers that "
        "use the same secret (TURNLOG_JWT_SECRET, or the one in the same data dir).",
    )
    token.add_argument("--user", required=True, help="user id (the JWT `sub` claim)")
    token.add_argument("--ttl", type=int, default=30 * 24 * 3600, help="seconds (default 30 days)")
    token.add_argument(
        "--create-secret",
        action="store_true",
        help="create the data dir's secret if it has none (else `serve` creates it)",
    )

    replay = sub.add_parser("replay", help="verify or rebuild projections from the event log")
    rsub = replay.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    rsub.add_parser("verify", help="compare projections with the fold of the log; exit 1 on drift")
    rsub.add_parser("rebuild", help="rebuild projections from the log and swap them in atomically")
    show = rsub.add_parser("show", help="print a conversation as it stood at a version")
    show.add_argument("conversation_id", help="the conversation's id")
    show.add_argument(
        "--at", type=int, default=None, metavar="VERSION", help="its version (default: latest)"
    )

    chat = sub.add_parser(
        "chat",
        help="chat in the terminal",
        description="Chat in the terminal with a running `turnlog serve`.\nRun it where the "
        "server runs (same TURNLOG_DATA_DIR or TURNLOG_JWT_SECRET):\nit signs its own token.",
        epilog="slash commands:\n"
        + "\n".join(f"  {name:9} {what}" for name, what in SLASH_COMMANDS.items())
        + "\n\nCtrl-C while an answer streams stops it; at the answer prompt it withdraws "
        "the question.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument(
        "--conversation", default=None, metavar="ID", help="continue this conversation"
    )
    chat.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the server (http://127.0.0.1:8000)"
    )
    chat.add_argument("--user", default="demo-user", help="the user to chat as (demo-user)")

    db = sub.add_parser("db", help="the database in use")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("url", help="print the connection URL (starting the embedded one if needed)")
    stop = dsub.add_parser(
        "stop",
        help="stop the embedded PostgreSQL",
        description="Stop the embedded PostgreSQL; refused while a `turnlog serve` uses it.",
    )
    stop.add_argument(
        "--force",
        action="store_true",
        help="stop it even under a running server (which then answers 503 until it is back)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"turnlog: {exc}", file=sys.stderr)
        return 2
    match args.command:
        case "serve":
            if args.workers < 1:
                print(f"turnlog: --workers must be >= 1, got {args.workers}", file=sys.stderr)
                return 2
            from turnlog.generation.tools.registry import build_registry

            try:  # a bad tool configuration stops the server before it starts
                build_registry(settings.models.tools)
            except ValueError as exc:
                print(f"turnlog: {exc}", file=sys.stderr)
                return 2
            if args.workers > 1:
                from turnlog.http.workers import supervise

                return supervise(settings, host=args.host, port=args.port, workers=args.workers)
            from turnlog.http.serve import run_server

            return run_server(settings, host=args.host, port=args.port, worker_fd=args.worker_fd)
        case "token":
            from turnlog.http.auth import cli_token

            return cli_token(settings, user=args.user, ttl=args.ttl, create=args.create_secret)
        case "replay":
            from turnlog.replay import cli_replay

            return cli_replay(settings, args)
        case "chat":
            from turnlog.chat_cli import cli_chat

            return cli_chat(settings, args)
        case "db":
            from turnlog.db.embedded import cli_db

            return cli_db(settings, args.db_command, force=getattr(args, "force", False))
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())

"""The ``turnlog`` command (CONTRACT.md section 6).

Each subcommand's work lives beside its concept; this module only parses arguments and
imports the implementing module lazily, so ``turnlog token`` does not pay for litestar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from turnlog.config import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnlog", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    # Set by `serve --workers N` for its workers: the listening socket they inherit.
    serve.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)

    token = sub.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--user", required=True, help="user id (the JWT `sub` claim)")
    token.add_argument("--ttl", type=int, default=30 * 24 * 3600, help="seconds (default 30 days)")

    replay = sub.add_parser("replay", help="verify or rebuild projections from the event log")
    rsub = replay.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    rsub.add_parser("verify", help="compare projections with the fold of the log; exit 1 on drift")
    rsub.add_parser("rebuild", help="rebuild projections from the log and swap them in atomically")
    show = rsub.add_parser("show", help="print a conversation as it stood at a version")
    show.add_argument("conversation_id")
    show.add_argument("--at", type=int, default=None, metavar="VERSION")

    chat = sub.add_parser("chat", help="the terminal client")
    chat.add_argument("--conversation", default=None, metavar="ID")
    chat.add_argument("--url", default="http://127.0.0.1:8000")
    chat.add_argument("--user", default="demo-user")

    db = sub.add_parser("db", help="the database in use")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("url", help="print the connection URL (starting the embedded one if needed)")
    dsub.add_parser("stop", help="stop the embedded PostgreSQL")
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
            if args.workers > 1:
                from turnlog.http.workers import supervise

                return supervise(settings, host=args.host, port=args.port, workers=args.workers)
            from turnlog.http.serve import run_server

            return run_server(settings, host=args.host, port=args.port, worker_fd=args.worker_fd)
        case "token":
            from turnlog.http.auth import cli_token

            return cli_token(settings, user=args.user, ttl=args.ttl)
        case "replay":
            from turnlog.replay import cli_replay

            return cli_replay(settings, args)
        case "chat":
            from turnlog.client import cli_chat

            return cli_chat(settings, args)
        case "db":
            from turnlog.db.embedded import cli_db

            return cli_db(settings, args.db_command)
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())

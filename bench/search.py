"""Benchmark of conversation search: full-text ``q=`` beside a plain indexed lookup.

Run: ``python bench/search.py [--messages N] [--conversations C] [--users U] [--queries Q]``
(defaults: 1,000,000 messages across 10,000 conversations of 100 users; run it under
``flock /work/bench.lock`` on a shared machine).

One fresh database on one server: a private ``EmbeddedPostgres`` in a temp dir, or the
server of ``TURNLOG_DATABASE_URL`` if set (a scratch database is created there and dropped
after). The projection tables are filled with COPY (no log: search reads projections only):
each conversation alternates user messages and assistant answers (one text block), their
words drawn from a 20,000-word vocabulary with Zipf frequencies, as real text has them. The
GIN index is built after the load (and timed), as a rebuild does.

Then, on one connection, ``Q`` times each, for a random user:
- *list*: the plain newest-first page of ``GET /v1/conversations`` (the owner index);
- *search*: exactly the statement ``GET /v1/conversations?q=`` runs (turnlog.product.search,
  first page of 20, snippets included), for a rare word, a mid-frequency word, two words,
  a quoted phrase and a common word.

Target: search p99 <= 100 ms, and within 50x the plain lookup's p99 (the same run, the same
server); a miss prints MISSED and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import psycopg
from psycopg import sql

from turnlog.db.embedded import EmbeddedPostgres
from turnlog.db.schema import apply_schema
from turnlog.log.rows import CONVERSATION_COLUMNS, configure_connection
from turnlog.product import search

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
VOCABULARY = 20_000
PAGE = 20
TARGET_P99_MS = 100.0
TARGET_VS_PLAIN = 50.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def database() -> Iterator[tuple[str, str]]:
    """(URL of a fresh database with turnlog's schema, where it runs)."""
    external = os.environ.get("TURNLOG_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if external:
            server_url, where = external, "TURNLOG_DATABASE_URL"
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="turnlog-bench-"))
            pg = EmbeddedPostgres(Path(tmp), fsync=False)
            say(f"starting embedded PostgreSQL in {tmp} ...")
            server_url, where = pg.ensure_running(), "embedded"
            stack.callback(pg.stop)
        name = f"turnlog_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
        try:
            apply_schema(url)
            yield url, where
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# -- data ----------------------------------------------------------------------------------


def vocabulary(rng: random.Random) -> list[str]:
    """VOCABULARY distinct pronounceable words, most frequent first."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        words["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))] = None
    return list(words)


class Text:
    """Words with Zipf frequencies (s = 1.07), drawn from one big pre-drawn pool."""

    def __init__(self, rng: random.Random, words: list[str]) -> None:
        weights = [1 / (rank + 1) ** 1.07 for rank in range(len(words))]
        self.pool = rng.choices(words, weights=weights, k=4_000_000)
        self.rng = rng

    def __call__(self, n: int) -> str:
        start = self.rng.randrange(len(self.pool) - n)
        return " ".join(self.pool[start : start + n])


def fill(url: str, *, messages: int, conversations: int, users: int, seed: int) -> list[str]:
    """COPY the conversations and messages in; return the vocabulary."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    text = Text(rng, words)
    per = messages // conversations
    enc = msgspec.json.Encoder()
    with psycopg.connect(url) as conn:
        configure_connection(conn)
        # The GIN index is built once after the load (faster than entry by entry), as
        # `turnlog replay rebuild` builds a fresh table's indexes.
        conn.execute("DROP INDEX messages_search")
        cols = "id, owner, title, model, options, state, version, last_seq, created_at, updated_at"
        with conn.cursor().copy(f"COPY conversations ({cols}) FROM STDIN") as copy:
            cids = []
            for n in range(conversations):
                cid = uuid.UUID(int=n + 1)
                cids.append(cid)
                at = EPOCH + timedelta(seconds=n)
                copy.write_row(
                    (cid, f"user-{n % users}", text(4).capitalize(), "demo:default", "{}",
                     "idle", per + 1, per, at, at)
                )  # fmt: skip
        say(f"  {conversations:,} conversations copied")
        cols = (
            "id, conversation_id, seq, role, content, blocks, status, created_at, updated_at, "
            "stream_seq, open_tool_calls, awaiting_user"
        )
        with conn.cursor().copy(f"COPY messages ({cols}) FROM STDIN") as copy:
            done = 0
            for n, cid in enumerate(cids):
                at = EPOCH + timedelta(seconds=n)
                for seq in range(1, per + 1):
                    done += 1
                    mid = uuid.UUID(int=(n + 1) << 32 | seq)
                    if seq % 2:
                        row = (mid, cid, seq, "user", text(rng.randint(6, 30)), "[]")
                    else:
                        blocks = [{"type": "text", "text": text(rng.randint(20, 60))}]
                        row = (mid, cid, seq, "assistant", None, enc.encode(blocks).decode())
                    copy.write_row((*row, "completed", at, at, 0, [], []))
                    if done % 200_000 == 0:
                        say(f"  {done:,} messages copied")
        conn.commit()
        say("building the GIN index ...")
        started = time.perf_counter()
        conn.execute("CREATE INDEX messages_search ON messages USING gin (search)")
        conn.commit()
        say(f"  built in {time.perf_counter() - started:.1f} s")
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE conversations")
        conn.execute("VACUUM ANALYZE messages")
    return words


# -- timing --------------------------------------------------------------------------------


def timed(n: int, run: Callable[[int], int]) -> tuple[list[float], float]:
    """Milliseconds of ``n`` runs (after a warm-up of 20), and the mean rows returned."""
    for i in range(20):
        run(i)
    times, rows = [], 0
    for i in range(n):
        started = time.perf_counter()
        rows += run(i)
        times.append((time.perf_counter() - started) * 1000)
    return times, rows / n


def p(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--queries", type=int, default=300, help="runs of each measure")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--explain", action="store_true", help="print one plan of each search")
    args = ap.parse_args()

    with database() as (url, where):
        say(f"filling {args.messages:,} messages across {args.conversations:,} conversations ...")
        words = fill(
            url,
            messages=args.messages,
            conversations=args.conversations,
            users=args.users,
            seed=args.seed,
        )
        rng = random.Random(args.seed + 1)
        owners = [f"user-{rng.randrange(args.users)}" for _ in range(args.queries + 20)]
        kinds: dict[str, Callable[[], str]] = {
            "rare word": lambda: rng.choice(words[5_000:]),
            "mid word": lambda: rng.choice(words[200:2_000]),
            "two words": lambda: f"{rng.choice(words[50:1_000])} {rng.choice(words[50:1_000])}",
            "phrase": lambda: f'"{rng.choice(words[:100])} {rng.choice(words[:100])}"',
            "common word": lambda: rng.choice(words[:20]),
        }
        lines = []
        with psycopg.connect(url, autocommit=True) as conn:
            configure_connection(conn)
            version = conn.execute("SHOW server_version").fetchone()
            size = conn.execute(
                "SELECT pg_size_pretty(pg_relation_size('messages_search'))"
            ).fetchone()

            def plain(i: int) -> int:
                cur = conn.execute(
                    f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE owner = %s"
                    " ORDER BY created_at DESC, id DESC LIMIT %s",
                    (owners[i], PAGE + 1),
                    prepare=True,
                )
                return len(cur.fetchall())

            say("plain lookup ...")
            base, base_rows = timed(args.queries, plain)
            lines.append(("list (owner index)", base, base_rows))
            for kind, make in kinds.items():
                queries = [make() for _ in range(args.queries + 20)]

                def find(i: int, queries: list[str] = queries) -> int:
                    # Exactly what turnlog.product.search runs: the estimate, then the
                    # statement of its shape, never prepared (a plan per query).
                    params = search.parameters(
                        owners[i], queries[i], metadata={}, limit=PAGE + 1, offset=0
                    )
                    plan = conn.execute(search.ESTIMATE, {"q": params["q"]}, prepare=False)
                    statement = search.shape(plan.fetchone())
                    return len(conn.execute(statement, params, prepare=False).fetchall())

                if args.explain:
                    params = search.parameters(
                        owners[0], queries[0], metadata={}, limit=PAGE + 1, offset=0
                    )
                    row = conn.execute(search.ESTIMATE, {"q": params["q"]}).fetchone()
                    statement = search.shape(row)
                    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                    say(f"-- {kind}: {queries[0]}\n" + "\n".join(r[0] for r in plan))

                say(f"search: {kind} ...")
                times, rows = timed(args.queries, find)
                lines.append((f"search, {kind}", times, rows))

    base_p99 = p(base, 99)
    missed = []
    print(
        f"turnlog search benchmark: PostgreSQL {version[0] if version else '?'} ({where}), "
        f"{os.cpu_count()} CPUs; {args.messages:,} messages, {args.conversations:,} "
        f"conversations, {args.users} users; GIN index {size[0] if size else '?'}; "
        f"{args.queries} runs each"
    )
    header = ("measure", "p50 ms", "p99 ms", "mean ms", "rows", "p99 vs list")
    table = [header]
    for label, times, rows in lines:
        p99 = p(times, 99)
        ratio = p99 / base_p99
        if label.startswith("search") and (p99 > TARGET_P99_MS or ratio > TARGET_VS_PLAIN):
            missed.append(label)
        table.append(
            (
                label,
                f"{p(times, 50):.2f}",
                f"{p99:.2f}",
                f"{statistics.fmean(times):.2f}",
                f"{rows:.1f}",
                f"{ratio:.1f}x",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in [table[0], tuple("-" * w for w in widths), *table[1:]]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print(
        f"target: search p99 <= {TARGET_P99_MS:g} ms and <= {TARGET_VS_PLAIN:g}x the list's p99: "
        + ("met" if not missed else "MISSED (" + ", ".join(missed) + ")")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

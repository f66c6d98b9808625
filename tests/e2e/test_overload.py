"""Overload: when checkpoints cannot be stored in time, the server says so and
refuses new generations with 503 + Retry-After instead of silently widening what a crash
would lose; it accepts them again once the rows are stored on time.

Late checkpoints are made real, not simulated: another connection holds the row locks of
two generating conversations, so their checkpoint writes wait in PostgreSQL while their
unstored events age past TURNLOG_CHECKPOINT_S + 0.25 s.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import psycopg

from .support import DEMO, FAST, Server, wait_until

SLOW = {"tokens_per_second": 20, "length": 5000}


def _metric(h: httpx.Client, name: str) -> float:
    for line in h.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_late_checkpoints_refuse_new_generations_with_503_then_recover(
    spawn: Callable[..., Server],
) -> None:
    srv = spawn(env={"TURNLOG_CHECKPOINT_S": "0.2"}).start()
    with (
        srv.client() as c,
        srv.http() as h,
        psycopg.connect(srv.database_url, autocommit=True) as locker,
    ):
        held = [c.create_conversation(model=DEMO, options=SLOW)["id"] for _ in range(2)]
        other = c.create_conversation(model=DEMO, options=FAST)["id"]
        mids = [c.send(cid, "go")["assistant_message"]["id"] for cid in held]

        def send_other() -> httpx.Response:
            return h.post(f"/v1/conversations/{other}/messages", json={"content": "hi"})

        with locker.transaction():
            # The two rows' checkpoint writes now wait for these locks.
            locker.execute(
                "SELECT 1 FROM conversations WHERE id = ANY(%s::uuid[]) FOR UPDATE", (held,)
            )
            # Sends meanwhile answer 201 (or 409 while the quick answer runs) until the
            # held rows' events are overdue; then 503.
            refused = wait_until(
                lambda: (r := send_other()).status_code == 503 and r,
                timeout=60,
                what="a 503 while checkpoints wait on row locks",
            )
            assert int(refused.headers["Retry-After"]) >= 1
            assert "overloaded" in refused.json()["detail"]
            assert _metric(h, "turnlog_overloaded") == 1.0
            said = [
                json.loads(line)
                for line in srv.log_path.read_text().splitlines()
                if "overloaded: checkpoints are late" in line
            ]
            assert said, "no overload log line"
            # The server's judgement, not one generation's: no row's or request's context.
            assert said[0]["late_rows"] >= 2
            assert "message_id" not in said[0]
            assert "request_id" not in said[0]
        # Locks released: the late checkpoints commit (counted as misses), and once the
        # rows are stored on time again new generations are accepted.
        wait_until(
            lambda: _metric(h, "turnlog_checkpoint_deadline_misses_total") >= 1,
            timeout=60,
            what="the late checkpoints counted",
        )
        accepted = wait_until(
            lambda: (r := send_other()).status_code == 201 and r,
            timeout=60,
            what="sends accepted again",
        )
        assert accepted.json()["assistant_message"]["status"] == "generating"
        for mid in mids:
            c.cancel(mid)
        # Nothing was lost: each held row, stopped, folds to what its stream published.
        for cid, mid in zip(held, mids, strict=True):
            row = next(m for m in c.list_messages(cid) if m["id"] == mid)
            assert row["status"] == "aborted"
            assert row["blocks"], "the row kept its streamed text"

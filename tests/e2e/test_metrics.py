"""``GET /metrics``: Prometheus text from prometheus-client, moving as a generation runs (§2)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import DEMO, Follower, Server, wait_until

pytestmark = pytest.mark.slow


def _scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics as {(name, labels): value}, read by Prometheus' parser."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    # Prometheus' text format, its charset said once.
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_move_while_a_generation_runs(server: Server) -> None:
    """Starts, ends, tokens, first-token and duration histograms, checkpoint writes, live
    gauges and HTTP requests by route template all move with one generation."""
    before = _scrape(server)
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={"tokens_per_second": 40, "length": 60})
        mid = c.send(conv["id"], "count me")["assistant_message"]["id"]
        follower = Follower(server.client(), mid)
        follower.start()

        def running() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            now = _scrape(server)
            return now if _value(now, "turnlog_generations_running") >= 1 else None

        during = wait_until(running, what="a running generation in /metrics")
        assert _value(during, "turnlog_streams_open") >= 1
        wait_until(
            lambda: _value(_scrape(server), "turnlog_stream_subscribers") >= 1,
            what="the follower counted as a subscriber",
        )
        follower.join(30)
        assert follower.fold.done is not None
        assert follower.fold.done.status == "completed"
    after = _scrape(server)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    demo = {"provider": "demo", "model": "default"}
    assert moved("turnlog_generations_started_total", **demo) == 1
    assert moved("turnlog_generations_ended_total", **demo, status="completed") == 1
    assert moved("turnlog_tokens_total", **demo, direction="out") == 60
    assert moved("turnlog_tokens_total", **demo, direction="in") >= 1
    assert moved("turnlog_time_to_first_token_seconds_count", **demo) == 1
    assert moved("turnlog_generation_duration_seconds_count", **demo, status="completed") == 1
    assert moved("turnlog_checkpoint_write_seconds_count") >= 1
    assert _value(after, "turnlog_generations_running") == 0
    assert _value(after, "turnlog_oldest_unstored_delta_seconds") == 0
    assert (
        moved(
            "turnlog_http_requests_total",
            method="POST",
            route="/v1/conversations/{cid}/messages",
            status="201",
        )
        == 1
    )
    assert (
        moved(
            "turnlog_http_request_duration_seconds_count",
            method="GET",
            route="/v1/messages/{mid}/stream",
        )
        >= 1
    )
    assert not any(mid in dict(ls).get("route", "") for (_, ls) in after), "raw paths as labels"
    assert ("turnlog_db_pool_connections_in_use", frozenset()) in after
    assert ("turnlog_db_pool_requests_waiting", frozenset()) in after
    assert ("turnlog_feeds_open", frozenset()) in after

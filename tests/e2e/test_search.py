"""Full-text search over titles and message text (`GET /v1/conversations?q=`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import FAST, Server, assert_problem, wait_until

pytestmark = pytest.mark.slow


def _chat(h: httpx.Client, title: str | None, *texts: str) -> str:
    """A conversation with these user messages, each answered (demo, fast)."""
    body: dict[str, Any] = {"options": FAST}
    if title is not None:
        body["title"] = title
    cid: str = h.post("/v1/conversations", json=body).json()["id"]
    for text in texts:
        r = h.post(f"/v1/conversations/{cid}/messages", json={"content": text})
        assert r.status_code == 201, r.text
        wait_until(
            lambda: h.get(f"/v1/conversations/{cid}").json()["conversation"]["state"] == "idle",
            what="the answer",
        )
    return cid


def _search(h: httpx.Client, q: str, **params: str) -> list[dict[str, Any]]:
    r = h.get("/v1/conversations", params={"q": q, **params})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_search_ranks_finds_snippets_and_stays_per_user(server: Server) -> None:
    """Title and message matches are found, the better match first, with a snippet; the
    same words in another user's conversations are never found."""
    with server.http("search-a") as h, server.http("search-b") as other:
        once = _chat(h, None, "my zebrafish tank needs a heater")
        twice = _chat(h, "Zebrafish care", "feeding zebrafish twice a day")
        none = _chat(h, None, "nothing about fish here")
        _chat(other, "zebrafish secrets", "the zebrafish password is hunter2")

        found = _search(h, "zebrafish")
        assert [c["id"] for c in found] == [twice, once]
        assert none not in [c["id"] for c in found]
        assert "zebrafish" in found[1]["match"].lower()
        assert "heater" in found[1]["match"]
        assert "hunter2" not in str(_search(h, "hunter2 OR password"))
        assert _search(h, "hunter2") == []
        assert [c["id"] for c in _search(h, "heater")] == [once]
        # Assistant text is searched too: the demo answer's words are the model's.
        row = h.get(f"/v1/conversations/{once}/messages").json()["items"][-1]
        word = next(b["text"] for b in row["blocks"] if b["type"] == "text").split()[-1]
        assert once in [c["id"] for c in _search(h, word.strip(".,!?"))]
        # With metadata filters and paging.
        page = h.get("/v1/conversations", params={"q": "zebrafish", "limit": 1}).json()
        assert [c["id"] for c in page["items"]] == [twice]
        rest = h.get(
            "/v1/conversations", params={"q": "zebrafish", "limit": 1, "cursor": page["next"]}
        ).json()
        assert [c["id"] for c in rest["items"]] == [once]
        assert rest["next"] is None
        assert _search(h, "zebrafish", **{"metadata.k": "v"}) == []


@pytest.mark.parametrize(
    "q",
    [
        "a & b | !c",
        "'quoted' \"phrase",
        '"unterminated',
        "-",
        "or or or",
        "(((",
        ":*",
        "zebra:* & !",
        "\\",
        "😀 emoji",
        "x" * 999,
        "select * from messages; --",
    ],
)
def test_hostile_queries_are_answered(server: Server, q: str) -> None:
    """Operators, quotes and odd text are plain searches: 200, never 500."""
    with server.http("search-c") as h:
        r = h.get("/v1/conversations", params={"q": q})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("q", "words"), [("x" * 10_000, "at most 1000"), ("a\x00b", "NUL")])
def test_queries_postgres_cannot_take_are_400(server: Server, q: str, words: str) -> None:
    """10,000 characters and NUL are 400 saying why."""
    with server.http("search-c") as h:
        r = h.get("/v1/conversations", params={"q": q})
        assert_problem(r, 400)
        assert words in r.json()["detail"]
        r = h.get("/v1/conversations", params={"q": "x", "cursor": "bm90IG1pbmU"})
        assert_problem(r, 400)

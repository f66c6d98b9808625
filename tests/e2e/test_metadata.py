"""Conversation metadata over HTTP: limits, `metadata.KEY=` filters, export."""

from __future__ import annotations

import pytest

from .support import DEMO, Server, assert_problem

pytestmark = pytest.mark.slow


def test_metadata_is_stored_changed_and_exported(server: Server) -> None:
    """metadata given at creation is in the conversation, replaced by PATCH, and exported."""
    with server.http("meta-a") as h:
        r = h.post("/v1/conversations", json={"model": DEMO, "metadata": {"project": "p1"}})
        assert r.status_code == 201, r.text
        conv = r.json()
        assert conv["metadata"] == {"project": "p1"}
        r = h.patch(f"/v1/conversations/{conv['id']}", json={"metadata": {"task": "t9"}})
        assert r.status_code == 200, r.text
        assert r.json()["metadata"] == {"task": "t9"}
        r = h.patch(f"/v1/conversations/{conv['id']}", json={"title": "kept"})
        assert r.json()["metadata"] == {"task": "t9"}, "a patch without metadata keeps it"
        exported = h.get(f"/v1/conversations/{conv['id']}/export?format=json").json()
        assert exported["conversation"]["metadata"] == {"task": "t9"}
        md = h.get(f"/v1/conversations/{conv['id']}/export").text
        assert "- task: t9" in md


def test_metadata_filters_list_only_matching_own_conversations(server: Server) -> None:
    """metadata.KEY=VALUE filters the list (all must hold) and never shows another user's."""
    with server.http("meta-b") as h, server.http("meta-c") as other:
        made = {}
        for name, md in {
            "a": {"project": "x", "task": "1"},
            "b": {"project": "x", "task": "2"},
            "c": {"project": "y"},
        }.items():
            made[name] = h.post("/v1/conversations", json={"metadata": md}).json()["id"]
        other.post("/v1/conversations", json={"metadata": {"project": "x"}})

        def ids(params: str) -> list[str]:
            r = h.get(f"/v1/conversations?{params}")
            assert r.status_code == 200, r.text
            return [c["id"] for c in r.json()["items"]]

        assert ids("metadata.project=x") == [made["b"], made["a"]]
        assert ids("metadata.project=x&metadata.task=1") == [made["a"]]
        assert ids("metadata.project=z") == []
        page = h.get("/v1/conversations?metadata.project=x&limit=1").json()
        assert [c["id"] for c in page["items"]] == [made["b"]]
        rest = h.get(f"/v1/conversations?metadata.project=x&limit=1&cursor={page['next']}")
        assert [c["id"] for c in rest.json()["items"]] == [made["a"]]


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ({"k" * 65: "v"}, "1 to 64"),
        ({"": "v"}, "1 to 64"),
        ({"k": "v" * 513}, "at most 512"),
        ({"k": "a\x00b"}, "NUL"),
        ({"k": 1}, "Expected `str`"),
        ({"k": None}, "Expected `str`"),
        (["k"], "Expected `object"),
    ],
)
def test_metadata_beyond_the_limits_is_400_saying_which(
    server: Server, metadata: object, words: str
) -> None:
    """Too many keys, long keys or values, NUL and non-strings are 400s stating the limit."""
    with server.http("meta-d") as h:
        r = h.post("/v1/conversations", json={"metadata": metadata})
        assert_problem(r, 400)
        assert words in r.json()["detail"], r.json()
        cid = h.post("/v1/conversations", json={}).json()["id"]
        r = h.patch(f"/v1/conversations/{cid}", json={"metadata": metadata})
        assert_problem(r, 400)
        assert h.get(f"/v1/conversations/{cid}").json()["conversation"]["metadata"] == {}
    with server.http("meta-d") as h:
        r = h.get("/v1/conversations", params={"metadata." + "k" * 65: "v"})
        assert_problem(r, 400)

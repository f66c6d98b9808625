"""Models over HTTP: GET /v1/models, and 400/403 for unknown or forbidden models (§2, §5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .support import DEMO, FAST, Server, assert_problem

pytestmark = pytest.mark.slow

CONFIG = """
[providers.toy]
kind = "demo"
models = ["fast", "slow"]
[providers.toy.defaults.fast]
tokens_per_second = 400
length = 5

[access]
default = ["demo:*"]
[access.users]
carol = ["toy:fast", "demo:default"]
"""


def test_models_lists_the_default_model(server: Server) -> None:
    """Without a config file, every user may use the demo model."""
    with server.http("alice") as http:
        items = http.get("/v1/models").json()["items"]
    assert [i["id"] for i in items] == [DEMO]
    assert items[0]["provider"] == "demo"
    assert items[0]["capabilities"]["available"] is True
    assert "length" in items[0]["capabilities"]["options"]


def test_unknown_models_and_options_are_400_naming_them(server: Server) -> None:
    """Create, patch and send refuse an unknown model or option with a readable 400."""
    with server.http("alice") as http:
        r = http.post("/v1/conversations", json={"model": "openai:gpt-4o"})
        assert_problem(r, 400)
        assert "openai:gpt-4o" in r.json()["detail"]
        assert "OPENAI_API_KEY" in r.json()["detail"]
        r = http.post("/v1/conversations", json={"model": DEMO, "options": {"colour": 1}})
        assert_problem(r, 400)
        assert "colour" in r.json()["detail"]
        cid = http.post("/v1/conversations", json={"model": DEMO, "options": FAST}).json()["id"]
        r = http.patch(f"/v1/conversations/{cid}", json={"model": "nope:x"})
        assert_problem(r, 400)
        assert "nope:x" in r.json()["detail"]
        r = http.post(
            f"/v1/conversations/{cid}/messages", json={"content": "hi", "options": {"x": 1}}
        )
        assert_problem(r, 400)
        assert http.get(f"/v1/conversations/{cid}/messages").json()["items"] == []


def test_config_file_providers_defaults_and_access(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """TURNLOG_CONFIG names a provider with per-model defaults; access lists give 403."""
    path = tmp_path / "turnlog.toml"
    path.write_text(CONFIG)
    srv = spawn(env={"TURNLOG_CONFIG": str(path)}).start()
    with srv.http("carol") as http:
        assert [i["id"] for i in http.get("/v1/models").json()["items"]] == [DEMO, "toy:fast"]
        r = http.post("/v1/conversations", json={"model": "toy:slow"})
        assert_problem(r, 403)
        assert "toy:slow" in r.json()["detail"]
        assert_problem(http.post("/v1/conversations", json={"model": "toy:nope"}), 400)
        cid = http.post("/v1/conversations", json={"model": "toy:fast"}).json()["id"]
    with srv.http("dave") as http:
        assert [i["id"] for i in http.get("/v1/models").json()["items"]] == [DEMO]
        assert_problem(http.post("/v1/conversations", json={"model": "toy:fast"}), 403)
        dave_cid = http.post("/v1/conversations", json={"model": DEMO}).json()["id"]
        assert_problem(http.patch(f"/v1/conversations/{dave_cid}", json={"model": "toy:fast"}), 403)
    with srv.client("carol") as c:
        sent = c.send(cid, "hello")
        fold = c.follow(sent["assistant_message"]["id"])
        # The provider's default options applied: five words at 400 tokens per second.
        assert len(fold.text.split()) == 5


def test_a_provider_without_its_key_is_logged_listed_unavailable_and_refused(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """A configured provider whose key variable is empty: the server says so when it starts,
    /v1/models lists its models with available false and the reason, and a conversation
    or a send with it (one made while the key was set) is a 400 naming the variable."""
    path = tmp_path / "turnlog.toml"
    path.write_text(
        '[providers.claude]\nkind = "anthropic"\napi_key_env = "CLAUDE_KEY"\nmodels = ["x"]\n'
    )
    keyed = spawn(env={"TURNLOG_CONFIG": str(path), "CLAUDE_KEY": "k"}).start()
    with keyed.http("alice") as http:
        cid = http.post("/v1/conversations", json={"model": "claude:x"}).json()["id"]
    keyed.kill()
    srv = spawn(
        env={"TURNLOG_CONFIG": str(path), "CLAUDE_KEY": ""}, database_url=keyed.database_url
    ).start()
    assert "CLAUDE_KEY" in srv.log()
    with srv.http("alice") as http:
        items = {i["id"]: i for i in http.get("/v1/models").json()["items"]}
        assert items[DEMO]["capabilities"]["available"] is True
        claude = items["claude:x"]["capabilities"]
        assert claude["available"] is False
        assert "CLAUDE_KEY" in claude["detail"]
        r = http.post("/v1/conversations", json={"model": "claude:x"})
        assert_problem(r, 400)
        assert "CLAUDE_KEY" in r.json()["detail"]
        r = http.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"})
        assert_problem(r, 400)
        assert "CLAUDE_KEY" in r.json()["detail"]

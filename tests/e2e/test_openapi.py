"""``GET /openapi.json`` describes every route, and a live server honours it (§2).

schemathesis (from PyPI) reads the description, generates requests for every operation,
authenticated, and checks each answer: no 5xx, every status documented, every body and
content type as described. It runs as its own process with a time budget, so a hang fails
the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support import DEMO, Server, make_token

pytestmark = pytest.mark.slow

# Every public route, as (method, path template): the API of docs/protocol.md and the
# AI SDK routes of docs/ui-chat.md.
PUBLIC_ROUTES = {
    ("post", "/v1/conversations"),
    ("get", "/v1/conversations"),
    ("get", "/v1/conversations/{cid}"),
    ("patch", "/v1/conversations/{cid}"),
    ("delete", "/v1/conversations/{cid}"),
    ("post", "/v1/conversations/{cid}/messages"),
    ("get", "/v1/conversations/{cid}/messages"),
    ("put", "/v1/conversations/{cid}/messages/{mid}"),
    ("get", "/v1/conversations/{cid}/live"),
    ("get", "/v1/conversations/{cid}/export"),
    ("get", "/v1/messages/{mid}/stream"),
    ("post", "/v1/messages/{mid}/cancel"),
    ("post", "/v1/messages/{mid}/retry"),
    ("post", "/v1/messages/{mid}/tool-results"),
    ("get", "/v1/models"),
    ("post", "/v1/conversations/{cid}/stream-token"),
    ("get", "/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/v1/ui/chat"),
    ("get", "/v1/ui/chat/{chat_id}/stream"),
    ("post", "/v1/ui/chat/{chat_id}/stop"),
    ("get", "/v1/ui/chat/{chat_id}/messages"),
}


def test_openapi_describes_every_route_with_bodies_and_errors(server: Server) -> None:
    """/openapi.json (no auth) is OpenAPI 3.1 naming every route; strict bodies forbid
    unknown fields; errors share one shape."""
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert ops >= PUBLIC_ROUTES, PUBLIC_ROUTES - ops
    send = doc["paths"]["/v1/conversations/{cid}/messages"]["post"]
    body_ref = send["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert body["required"] == ["content"]
    assert body["additionalProperties"] is False
    assert {"201", "200", "400", "401", "404", "409", "413", "429"} <= set(send["responses"])
    assert send["security"] == [{"bearer": []}]
    error = doc["components"]["schemas"]["ErrorAnswer"]
    assert set(error["required"]) == {"status_code", "detail"}
    message = doc["components"]["schemas"]["Message"]
    assert "blocks" in message["required"]
    export = doc["paths"]["/v1/conversations/{cid}/export"]["get"]
    assert {"text/markdown", "application/json"} <= set(export["responses"]["200"]["content"])
    assert {p["name"] for p in export["parameters"]} == {"cid", "format", "lang"}


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema(
    server: Server, tmp_path: Path
) -> None:
    """Every operation, authenticated, fuzzed within a time budget: no 5xx, no undocumented
    status, content type or body shape, and the run ends (no hang)."""
    token = make_token("fuzzer")
    # The fuzzer's own conversation, so that requests reach past the 404 of a random id.
    # Streams and feeds keep random ids: a live feed never ends by design.
    with server.client("fuzzer") as c:
        cid = c.create_conversation(model=DEMO, options={"tokens_per_second": 400, "length": 5})[
            "id"
        ]
        mid = c.send(cid, "hello")["assistant_message"]["id"]
        c.follow(mid)
    (tmp_path / "schemathesis.toml").write_text(
        "[[operations]]\n"
        'include-path-regex = "^/v1/(conversations/[{]cid[}](/messages.*|/export)?|messages/.*'
        '/(cancel|retry|tool-results))$"\n'
        'include-method-regex = "^(GET|POST|PUT|PATCH)$"\n'
        f'parameters = {{ "path.cid" = "{cid}", "path.mid" = "{mid}" }}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--max-time",
        "30",
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--seed",
        "12",
        "--no-shrink",
        "--suppress-health-check",
        "all",
    ]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"schemathesis did not finish: {exc.stdout!r}") from None
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-15000:]
    assert "No issues found" in out or "passed" in out, out[-5000:]

"""The shared conformance cases in reducer/conformance/*.json (every implementation runs them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from turnlog_reducer import (
    EMPTY,
    StreamProtocolError,
    decode_blocks,
    decode_event,
    encode_blocks,
    fold,
)

CASES = sorted((Path(__file__).parents[2] / "reducer" / "conformance").glob("*.json"))
EVENT_TYPES = {
    "text_delta",
    "reasoning_delta",
    "tool_call_started",
    "tool_call_delta",
    "tool_call_ready",
    "signature",
    "reasoning_redacted",
    "done",
}


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_conformance_case(path: Path) -> None:
    """Folding the case's events gives exactly its blocks, or raises its error."""
    case = _load(path)
    assert ("blocks" in case) != ("error" in case)
    events = [decode_event(json.dumps(e)) for e in case["events"]]
    if "error" in case:
        assert case["error"] == "StreamProtocolError"
        with pytest.raises(StreamProtocolError):
            fold(EMPTY, events)
        return
    blocks = fold(EMPTY, events)
    assert json.loads(encode_blocks(blocks)) == case["blocks"]
    assert blocks == decode_blocks(json.dumps(case["blocks"]))


def test_conformance_cases_cover_every_event_type_and_error() -> None:
    """The cases are at least 12 and use every event type, with each invalid case present."""
    cases = [_load(p) for p in CASES]
    assert len(cases) >= 12
    used = {e["type"] for c in cases for e in c["events"]}
    assert used == EVENT_TYPES
    failing_last = {c["events"][-1]["type"] for c in cases if "error" in c}
    assert failing_last == {"tool_call_delta", "tool_call_ready", "tool_call_started", "signature"}

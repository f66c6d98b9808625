"""NUL characters from a model never reach PostgreSQL (which cannot store them)."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from turnlog_reducer import (
    EMPTY,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    encode_event,
    fold,
)

from turnlog.generation.step import without_nul


@given(st.text())
def test_text_without_nul_is_unchanged_and_nul_becomes_replacement(text: str) -> None:
    """Text deltas lose every U+0000 (as U+FFFD) and keep everything else."""
    for kind in (TextDelta, ReasoningDelta):
        out = without_nul(kind(text=text))
        assert isinstance(out, kind)
        assert out.text == text.replace("\x00", "\ufffd")
        if "\x00" not in text:
            assert out == kind(text=text)


def test_tool_call_events_are_cleaned_everywhere() -> None:
    """Tool call ids, names, argument deltas and parsed arguments are cleaned too."""
    events = [
        without_nul(ToolCallStarted(id="c\x001", name="clo\x00ck")),
        without_nul(ToolCallDelta(id="c\ufffd1", arguments_delta='{"q":"a\x00"}')),
        without_nul(ToolCallReady(id="c\ufffd1", arguments={"q": ["a\x00", {"k\x00": 1}]})),
    ]
    for event in events:
        assert b"\\u0000" not in encode_event(event)
    blocks = fold(EMPTY, events)
    assert msgspec.json.encode(blocks[0].arguments) == '{"q":["a\ufffd",{"k\ufffd":1}]}'.encode()

"""The JavaScript reducer (reducer/js) is the Python one's twin: over generated streams, with
every event sent as the Python codec writes it, it folds to the same blocks and re-encodes
events and blocks to the same JSON: the same bytes, but for the JSON values inside
``arguments`` and ``usage``, which JavaScript holds as its own values: one number type
(``0.0`` and ``-0.0`` come back as ``0``, integers past 2**53 round) and objects that put
integer-like keys first. One ``node`` process per example folds a batch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from turnlog_reducer import EMPTY, StreamEvent, encode_blocks, encode_event, fold

from tests.strategies import streams

# Node is required by `make test` anyway (make test-js); without it this fails, loudly.
NODE = shutil.which("node") or "node"
REDUCER = Path(__file__).parents[2] / "reducer" / "js" / "reducer.js"

# Reads one JSON array of streams (each a list of event JSON texts) on stdin; writes, per
# stream, the re-encoded events and the encoded fold.
SCRIPT = """
const { EMPTY, applyStreamEvent, decodeEvent, encodeBlocks, encodeEvent } = await import(%s);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = JSON.parse(input).map((stream) => {
  let blocks = EMPTY;
  const events = stream.map((text) => {
    const event = decodeEvent(text);
    blocks = applyStreamEvent(blocks, event);
    return encodeEvent(event);
  });
  return { events, blocks: encodeBlocks(blocks) };
});
process.stdout.write(JSON.stringify(out));
"""


# Each example starts node: no shrinking (minutes on a failure); a batch shows enough.
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.generate],
)
@given(st.lists(streams, min_size=10, max_size=20))
def test_the_js_reducer_folds_and_encodes_byte_for_byte_like_python(
    batch: list[list[StreamEvent]],
) -> None:
    """JS decode -> fold -> encode of Python-encoded streams gives Python's exact bytes."""
    wire = [[encode_event(e).decode() for e in evs] for evs in batch]
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", SCRIPT % json.dumps(REDUCER.as_uri())],
        input=json.dumps(wire),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for evs, sent, got in zip(batch, wire, json.loads(done.stdout), strict=True):
        assert [_spelled(e) for e in got["events"]] == [_spelled(e) for e in sent]
        assert _spelled(got["blocks"]) == _spelled(encode_blocks(fold(EMPTY, evs)).decode())


def _spelled(text: str) -> str:
    """``text`` with every JSON number respelled as the float it denotes, keys sorted.

    ``+ 0.0`` turns ``-0.0`` into ``0.0``: ``JSON.stringify(-0)`` is ``"0"``."""
    value = json.loads(text, parse_int=_number, parse_float=_number)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _number(text: str) -> float:
    return float(text) + 0.0

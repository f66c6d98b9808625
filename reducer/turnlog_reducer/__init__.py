"""turnlog_reducer: fold a model's stream events into content blocks, purely and in linear time.

General layout:

- ``_events``  the stream events (a msgspec tagged union) and their JSON codec;
- ``_blocks``  the block Structs, ``Blocks`` (the persistent state) and its JSON codec;
- ``_reducer`` ``apply_stream_event``, ``fold`` and ``StreamProtocolError``.

The laws this package keeps are stated in ``docs/protocol.md`` and tested in
``tests/reducer``; ``reducer/conformance/*.json`` holds cases any other implementation
must pass too.
"""

from ._blocks import (
    EMPTY,
    Block,
    Blocks,
    ReasoningBlock,
    TextBlock,
    ToolCallBlock,
    decode_blocks,
    encode_blocks,
)
from ._events import (
    Done,
    ReasoningDelta,
    ReasoningRedacted,
    Signature,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    decode_event,
    encode_event,
)
from ._reducer import StreamProtocolError, apply_stream_event, fold

__all__ = [
    "EMPTY",
    "Block",
    "Blocks",
    "Done",
    "ReasoningBlock",
    "ReasoningDelta",
    "ReasoningRedacted",
    "Signature",
    "StreamEvent",
    "StreamProtocolError",
    "TextBlock",
    "TextDelta",
    "ToolCallBlock",
    "ToolCallDelta",
    "ToolCallReady",
    "ToolCallStarted",
    "apply_stream_event",
    "decode_blocks",
    "decode_event",
    "encode_blocks",
    "encode_event",
    "fold",
]

# Public classes answer to the package name (tracebacks, reprs, pickles), not the module
# that happens to define them.
for _cls in (Blocks, StreamProtocolError):
    _cls.__module__ = __name__
del _cls

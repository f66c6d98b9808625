"""The Vercel AI SDK ``useChat`` view of turnlog (docs/ui-chat.md).

General layout::

    mapping.py   pure: rows and stream events -> UI message chunks, turns, UI messages
    chat.py      the adapter: a useChat request -> commands -> a frame iterator
                 (UIChat.answer), and resume, stop, messages; the HTTP route only parses
                 the request and answers with what it returns
"""

from turnlog.uichat.chat import CHAT_NAMESPACE, ChatIn, UIChat
from turnlog.uichat.mapping import (
    INTERRUPTED_TEXT,
    Chunk,
    Start,
    StartStep,
    StepEncoder,
    UITurn,
    assemble,
    encode_chunk,
    finish_reason,
    group_turns,
    metadata,
    step_end,
    terminal,
    tool_outputs,
    turn_chunks,
    ui_messages,
)

__all__ = [
    "CHAT_NAMESPACE",
    "INTERRUPTED_TEXT",
    "ChatIn",
    "Chunk",
    "Start",
    "StartStep",
    "StepEncoder",
    "UIChat",
    "UITurn",
    "assemble",
    "encode_chunk",
    "finish_reason",
    "group_turns",
    "metadata",
    "step_end",
    "terminal",
    "tool_outputs",
    "turn_chunks",
    "ui_messages",
]

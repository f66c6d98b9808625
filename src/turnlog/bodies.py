"""The request bodies of the commands (``turnlog.commands``): one strict Struct each, decoded
by the HTTP routes (unknown fields and wrong types are 400) and passed to ``Chat`` as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ConversationIn",
    "ConversationPatch",
    "EditIn",
    "MessageIn",
    "RetryIn",
    "ToolApprovalIn",
    "ToolResultIn",
]


class ConversationIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: str | None = None
    model: str | None = None
    options: dict[str, Any] | None = None
    system_prompt: str | None = None
    metadata: dict[str, str] | None = None
    agent: str | None = None  # a preset whose fields are defaults under these
    tools: list[str] | None = None  # names or globs; None: the agent's or the default


class ConversationPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: str | msgspec.UnsetType | None = msgspec.UNSET
    model: str | msgspec.UnsetType = msgspec.UNSET
    options: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    system_prompt: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, str] | msgspec.UnsetType = msgspec.UNSET  # replaces the whole map
    agent: str | msgspec.UnsetType | None = msgspec.UNSET
    tools: list[str] | msgspec.UnsetType | None = msgspec.UNSET


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: str
    client_message_id: str | None = None
    options: dict[str, Any] | None = None


class EditIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: str
    resend: bool = False  # true: a new version of the message, answered (turnlog.versioning)


class ToolResultIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tool_call_id: str
    content: str


class ToolApprovalIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tool_call_id: str
    approved: bool
    reason: str | None = None


class RetryIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    options: dict[str, Any] | None = None

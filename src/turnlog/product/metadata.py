"""Conversation metadata: at most 16 string keys to string values (a project id, a task
id, ...), and the ``metadata.KEY=VALUE`` filters of ``GET /v1/conversations``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MAX_KEYS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
FILTER_PREFIX = "metadata."


class BadMetadata(ValueError):
    """Metadata or a filter beyond the limits (the commands answer it with a 400)."""


def check(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` if it keeps the limits, else ``BadMetadata`` naming the one it broke."""
    if len(metadata) > MAX_KEYS:
        raise BadMetadata(f"metadata has {len(metadata)} keys; at most {MAX_KEYS} are allowed")
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_KEY_CHARS:
            raise BadMetadata(
                f"metadata key {key[:MAX_KEY_CHARS]!r} is {len(key)} characters; "
                f"keys are 1 to {MAX_KEY_CHARS} characters"
            )
        if len(value) > MAX_VALUE_CHARS:
            raise BadMetadata(
                f"metadata value of {key!r} is {len(value)} characters; "
                f"values are at most {MAX_VALUE_CHARS} characters"
            )
        for what, text in (("key", key), ("value", value)):
            if "\x00" in text:
                raise BadMetadata(f"metadata {what} of {key!r} must not contain NUL (U+0000)")
    return dict(metadata)


def filters(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``metadata.KEY=VALUE`` query parameters as a map (all must hold); a key given
    twice with two values is a 400 (no conversation could match both)."""
    wanted: dict[str, str] = {}
    for name, value in params:
        if not name.startswith(FILTER_PREFIX):
            continue
        key = name[len(FILTER_PREFIX) :]
        if key in wanted and wanted[key] != value:
            raise BadMetadata(f"metadata.{key} is given twice with different values")
        wanted[key] = value
    if wanted:
        check(wanted)
    return wanted

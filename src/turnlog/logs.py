"""Structured logging: structlog, JSON lines on stderr, ids bound in contextvars."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog

# One JSON encoder per ``default`` for the process, not one per line: ``json.dumps`` with a
# keyword argument builds a new ``JSONEncoder`` every call. Same options, same output.
_ENCODERS: dict[Callable[[Any], Any], json.JSONEncoder] = {}


def _dumps(obj: Any, *, default: Callable[[Any], Any]) -> str:
    """``json.dumps(obj, default=default)`` (what JSONRenderer calls by default)."""
    encoder = _ENCODERS.get(default)
    if encoder is None:
        encoder = _ENCODERS[default] = json.JSONEncoder(default=default)
    return encoder.encode(obj)


def configure(level: str | None = None) -> None:
    """JSON lines (or readable lines on a terminal) on stderr, at TURNLOG_LOG_LEVEL."""
    name = (level or os.environ.get("TURNLOG_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelNamesMapping().get(name, logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

"""anyio's asyncio objects, made without anyio's backend lookup per object.

``anyio.CancelScope()``, ``anyio.Event()``, ``anyio.Lock()`` and ``anyio.current_time()``
find the running backend (sniffio, the current task) on every call: two to three times the
cost of the object itself, and each send makes a dozen of them. These make the very same
objects (anyio's asyncio classes, looked up once): the server runs on asyncio only.
"""

from __future__ import annotations

import asyncio
import functools
import math

import anyio

__all__ = ["cancel_scope", "current_time", "event", "lock"]


@functools.cache
def _scope_type() -> type[anyio.CancelScope]:
    return type(anyio.CancelScope())


@functools.cache
def _event_type() -> type[anyio.Event]:
    return type(anyio.Event())


@functools.cache
def _lock_type() -> type[anyio.Lock]:
    return type(anyio.Lock())


def cancel_scope(*, shield: bool = False, deadline: float = math.inf) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=shield, deadline=deadline)``."""
    return _scope_type()(shield=shield, deadline=deadline)


def event() -> anyio.Event:
    """``anyio.Event()``."""
    return _event_type()()


def lock(*, fast_acquire: bool = False) -> anyio.Lock:
    """``anyio.Lock(fast_acquire=fast_acquire)``."""
    return _lock_type()(fast_acquire=fast_acquire)


def current_time() -> float:
    """``anyio.current_time()``: the running asyncio loop's clock."""
    return asyncio.get_running_loop().time()

"""The domain errors: every refusal the core gives, and the HTTP status each one becomes.

::

    DomainError                 400  a request or an event that does not fit the stored rows
    ├── NotFound                404  the conversation or message does not exist
    ├── Forbidden               403  the caller may not do this (a model it may not use)
    ├── ConversationBusy        409  generating or awaiting input
    ├── Fenced                  409  a late write from a generation that no longer owns its row
    ├── VersionConflict         409  expected_version was not the conversation's version
    ├── NotGenerating           409  nothing to cancel: the row is not generating
    ├── Conflict                409  contradicts what is stored (a client_message_id reused)
    ├── InvalidEvent            400  any other rule of projection.check
    ├── AlreadyStored           400  a checkpoint sent again after its answer was lost
    ├── BadRequest              400  a request that is malformed or out of range
    ├── TooLarge                413  a body or a field over its limit
    ├── TooMany                 429  a per-user limit is reached (with Retry-After)
    └── Unavailable             503  the server cannot take this now
        └── Overloaded          503  checkpoints are late: no new generations (with Retry-After)

The HTTP layer maps them (``turnlog.http.common``); a test keeps that mapping equal to this
drawing. Not domain errors: ``turnlog.log.pool.DatabaseUnavailable`` (503, the database
cannot be reached; a psycopg error), ``turnlog.http.auth.Unauthorized`` (401).
``AlreadyStored`` never reaches a client: the engine takes it as "already done".

Messages say what was expected, what came, and where: "expected version 7 of conversation
c_1, found 9".
"""

from __future__ import annotations

import math


class DomainError(Exception):
    """A request or an event that does not fit the current rows. Subclasses say which rule
    failed."""


class NotFound(DomainError):
    """The conversation or message does not exist (or is not the caller's)."""


class Forbidden(DomainError):
    """The caller may not do this."""


class ConversationBusy(DomainError):
    """The conversation is generating or awaiting input."""


class Fenced(DomainError):
    """A write from a generation that no longer owns its row (it ended or was replaced)."""


class VersionConflict(DomainError):
    """Another writer appended to the conversation since the caller read it."""


class NotGenerating(DomainError):
    """A cancel of a row that is not generating."""


class Conflict(DomainError):
    """The request contradicts what is stored (a ``client_message_id`` reused for other
    content)."""


class InvalidEvent(DomainError):
    """An event breaks a rule of ``turnlog.log.projection.check``."""


class AlreadyStored(DomainError):
    """A repeat of a checkpoint the log already holds (sent again after a lost answer)."""


class BadRequest(DomainError):
    """A request that is malformed or out of range."""


class TooLarge(DomainError):
    """A body or a field over its limit."""


class TooMany(DomainError):
    """A per-user limit is reached (HTTP 429); ``retry_after`` is in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class Unavailable(DomainError):
    """The server cannot take this now."""


class Overloaded(Unavailable):
    """Checkpoints are late: new generations are refused (503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))

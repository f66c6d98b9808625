"""Prompt commands (docs/operations.md): ``/NAME rest`` sends the prompt's template with
``{{input}}`` (the rest), ``{{date}}`` (the day of the send, UTC, YYYY-MM-DD) and ``{{user}}``
filled in; the row keeps what was typed in ``content`` and ``command: {name, input}``, and
the expansion (``MessageRecord.prompt``) is what the model is sent, stored with the send so
that replay and later turns never depend on the prompt as it is now.

Prompts come from the config (``[prompts.NAME]``, read-only, the same for everyone) and from
each user (``/v1/prompts``, the ``prompts`` table: operational, never replayed). A user's
prompt cannot take a configured prompt's name. Any other leading ``/`` is plain text.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from turnlog.log import events as ev
from turnlog.log.pool import BoundedPool
from turnlog.product.config import PROMPT_NAME, Prompt

MAX_DESCRIPTION_CHARS = 500
MAX_PROMPTS_PER_USER = 200
# `/name` then a space (any whitespace) or the end of the message.
_COMMAND = re.compile(r"^/([a-z0-9_-]{1,32})(?:\s+|$)")
_FIELDS = re.compile(r"\{\{\s*(input|date|user)\s*\}\}")


class PromptIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None  # required by POST; PUT takes it from the path
    description: str | None = None
    template: str


class PromptList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Prompt]


class BadPrompt(ValueError):
    """A prompt that breaks a rule (400)."""


class PromptTooLarge(ValueError):
    """A template (or an expansion) over the message limit (413)."""


class ReadOnly(ValueError):
    """A configured prompt cannot be changed through the API (403)."""


class Taken(ValueError):
    """The name is taken (409)."""


def check(body: PromptIn, name: str, max_chars: int) -> None:
    if not PROMPT_NAME.match(name):
        raise BadPrompt(f"prompt name {name[:40]!r}: a name is 1 to 32 of a-z, 0-9, _ and -")
    if not body.template.strip():
        raise BadPrompt("template must not be empty")
    if len(body.template) > max_chars:
        raise PromptTooLarge(
            f"template is {len(body.template)} characters; the limit is {max_chars}"
        )
    if body.description is not None and len(body.description) > MAX_DESCRIPTION_CHARS:
        raise BadPrompt(
            f"description is {len(body.description)} characters; "
            f"the limit is {MAX_DESCRIPTION_CHARS}"
        )
    for what, text in (("template", body.template), ("description", body.description or "")):
        if "\x00" in text:
            raise BadPrompt(f"{what} must not contain NUL (U+0000)")


def parse(content: str) -> tuple[str, str] | None:
    """(name, input) if ``content`` starts like a command (``/name`` then a space or the end)."""
    match = _COMMAND.match(content)
    if match is None:
        return None
    return match.group(1), content[match.end() :].strip()


def expand(template: str, *, input: str, user: str, at: datetime) -> str:
    """``template`` with ``{{input}}``, ``{{date}}`` and ``{{user}}`` filled in (once: text
    that the input brings in is never expanded again)."""
    values = {"input": input, "date": at.date().isoformat(), "user": user}
    return _FIELDS.sub(lambda m: values[m.group(1)], template)


class Prompts:
    """The configured prompts and the ``prompts`` table."""

    def __init__(self, pool: BoundedPool, configured: dict[str, Prompt]) -> None:
        self.pool = pool
        self.configured = configured

    async def listing(self, owner: str) -> list[Prompt]:
        """The configured prompts, then the user's own, each in name order."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT name, description, template FROM prompts WHERE owner = %s ORDER BY name",
                (owner,),
            )
            rows = await cur.fetchall()
        own = [Prompt(name=n, description=d or "", template=t, scope="user") for n, d, t in rows]
        return [*sorted(self.configured.values(), key=lambda p: p.name), *own]

    async def get(self, owner: str, name: str) -> Prompt | None:
        if name in self.configured:
            return self.configured[name]
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT description, template FROM prompts WHERE owner = %s AND name = %s",
                (owner, name),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Prompt(name=name, description=row[0] or "", template=row[1], scope="user")

    async def put(
        self, owner: str, name: str, body: PromptIn, *, at: datetime, create_only: bool
    ) -> tuple[Prompt, bool]:
        """Store the user's prompt ``name``; (it, whether it is new). ``create_only``: a
        prompt of that name already there is ``Taken``."""
        if name in self.configured:
            raise ReadOnly(f"prompt {name!r} is configured on the server and cannot be changed")
        async with self.pool.connection() as conn, conn.transaction():
            # The user's rows are counted and written in one transaction, under a lock of
            # the user's key, so that two creations at once cannot pass the limit together.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('turnlog.prompts:' || %s, 0))",
                (owner,),
            )
            cur = await conn.execute(
                "SELECT count(*), bool_or(name = %s) FROM prompts WHERE owner = %s",
                (name, owner),
            )
            count, exists = await _one(cur)
            if exists and create_only:
                raise Taken(f"you already have a prompt named {name!r}; PUT replaces it")
            if not exists and count >= MAX_PROMPTS_PER_USER:
                raise BadPrompt(f"at most {MAX_PROMPTS_PER_USER} prompts per user")
            await conn.execute(
                "INSERT INTO prompts (owner, name, description, template, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (owner, name) DO UPDATE SET"
                " description = EXCLUDED.description, template = EXCLUDED.template,"
                " updated_at = EXCLUDED.updated_at",
                (owner, name, body.description, body.template, at, at),
            )
        prompt = Prompt(name=name, description=body.description or "", template=body.template)
        return msgspec.structs.replace(prompt, scope="user"), not exists

    async def delete(self, owner: str, name: str) -> bool:
        if name in self.configured:
            raise ReadOnly(f"prompt {name!r} is configured on the server and cannot be deleted")
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM prompts WHERE owner = %s AND name = %s", (owner, name)
            )
            return cur.rowcount > 0

    async def command(
        self, owner: str, content: str, *, at: datetime
    ) -> tuple[ev.Command, str] | None:
        """The command ``content`` invokes and its expansion, or None (plain text)."""
        parsed = parse(content)
        if parsed is None:
            return None
        name, typed = parsed
        prompt = await self.get(owner, name)
        if prompt is None:
            return None
        text = expand(prompt.template, input=typed, user=owner, at=at)
        return ev.Command(name=name, input=typed), text


async def _one(cur: psycopg.AsyncCursor[Any]) -> tuple[int, bool]:
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])

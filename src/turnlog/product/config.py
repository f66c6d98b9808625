"""The chat product's ``TURNLOG_CONFIG`` sections: ``[agents.NAME]``, ``[access.agents]``,
``[prompts.NAME]`` and ``[cache]`` (see docs/operations.md)::

    [agents.reviewer]
    description = "Reviews code, tersely"
    model = "demo:default"          # left out: the server's default model
    system_prompt = "You review code. Be brief."
    tools = ["clock"]
    options = { length = 30 }

    [access.agents]                 # the same shape as [access] for models
    default = ["*"]
    users = { bob = ["reviewer"] }

    [prompts.summarize]
    description = "Summarize a text"
    template = "Summarize this in three bullet points ({{date}}, for {{user}}):\\n\\n{{input}}"

    [cache]
    models = ["demo:*"]             # globs over provider:name; the cache is off without it
    ttl_s = 3600
    scope = "user"                  # or "shared": one user's answer serves another's request
    max_entries = 10000

Only names and rules live here; ``turnlog.product.agents``, ``.prompts`` and ``.cache`` use them.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

import msgspec

PROMPT_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


class AgentIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str = ""
    model: str | None = None
    system_prompt: str | None = None
    tools: list[str] | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class PromptIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str = ""
    template: Annotated[str, msgspec.Meta(min_length=1)]


class CacheIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    models: list[str]
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    scope: Literal["user", "shared"] = "user"
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 10_000


class NamesAccessIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    default: list[str] | None = None
    users: dict[str, list[str]] = msgspec.field(default_factory=dict)


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    """A named preset: defaults for the conversations that name it (``GET /v1/agents``)."""

    name: str
    description: str
    model: str | None
    system_prompt: str | None
    tools: list[str] | None
    options: dict[str, Any]


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """A prompt command (``/NAME rest``): configured (``scope`` "global") or a user's own."""

    name: str
    description: str
    template: str
    scope: Literal["global", "user"] = "global"


class CacheConfig(msgspec.Struct, frozen=True, kw_only=True):
    models: tuple[str, ...]
    ttl_s: float = 3600.0
    scope: Literal["user", "shared"] = "user"
    max_entries: int = 10_000

    def caches(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.models)


class ProductConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the chat product reads from the config file (empty without one)."""

    agents: dict[str, Agent] = msgspec.field(default_factory=dict)
    # Who may use which agents: globs over agent names; None: every agent.
    agent_default: tuple[str, ...] | None = None
    agent_users: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    prompts: dict[str, Prompt] = msgspec.field(default_factory=dict)
    cache: CacheConfig | None = None

    def may_use_agent(self, user: str, name: str) -> bool:
        patterns = self.agent_users.get(user, self.agent_default)
        return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def product_config(
    agents: dict[str, AgentIn],
    access: NamesAccessIn,
    prompts: dict[str, PromptIn],
    cache: CacheIn | None,
    where: str,
) -> ProductConfig:
    """The checked sections; ``ValueError`` naming the table that is wrong."""
    for name in agents:
        if not name or name != name.strip():
            raise ValueError(f"{where}: bad agent name agents.{name!r}")
    for name in prompts:
        if not PROMPT_NAME.match(name):
            raise ValueError(
                f"{where}: prompts.{name}: a prompt name is 1 to 32 of a-z, 0-9, _ and -"
            )
    return ProductConfig(
        agents={
            n: Agent(
                name=n,
                description=a.description,
                model=a.model,
                system_prompt=a.system_prompt,
                tools=a.tools,
                options=a.options,
            )
            for n, a in agents.items()
        },
        agent_default=tuple(access.default) if access.default is not None else None,
        agent_users={u: tuple(p) for u, p in access.users.items()},
        prompts={
            n: Prompt(name=n, description=p.description, template=p.template)
            for n, p in prompts.items()
        },
        cache=None
        if cache is None
        else CacheConfig(
            models=tuple(cache.models),
            ttl_s=cache.ttl_s,
            scope=cache.scope,
            max_entries=cache.max_entries,
        ),
    )

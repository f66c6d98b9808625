"""Agents: named presets (``[agents.NAME]``: model, system prompt, tools, options) whose
fields are the defaults of the conversations that name them (``agent``).

- The model is chosen when the conversation is made: its own ``model``, else the agent's,
  else the server's default (and changed with PATCH like any conversation's).
- The system prompt, options and tools are the agent's *as configured now* wherever the
  conversation does not set its own, resolved at every step (:func:`effective`): a changed
  agent config applies to the next turn. Options merge key by key, the conversation's
  winning.
- Access is per user, like models: ``[access.agents]`` globs over agent names; an agent
  whose model the user may not use is not theirs either.
"""

from __future__ import annotations

import msgspec

from turnlog.log.projection import ConversationRecord
from turnlog.models import Catalog
from turnlog.product.config import Agent


class UnknownAgent(ValueError):
    """No agent of that name is configured (400)."""


class AgentForbidden(ValueError):
    """The user may not use this agent (403)."""


def model_of(agent: Agent, default_model: str) -> str:
    return agent.model or default_model


def allowed(catalog: Catalog, user: str, agent: Agent, default_model: str) -> bool:
    return catalog.product.may_use_agent(user, agent.name) and catalog.access.allows(
        user, model_of(agent, default_model)
    )


def listing(catalog: Catalog, user: str, default_model: str) -> list[Agent]:
    """The agents ``user`` may use, in name order, each with the model it gives."""
    return [
        msgspec.structs.replace(a, model=model_of(a, default_model))
        for name, a in sorted(catalog.product.agents.items())
        if allowed(catalog, user, a, default_model)
    ]


def check(catalog: Catalog, user: str, name: str, default_model: str) -> Agent:
    """The agent ``name`` if ``user`` may use it; ``UnknownAgent`` or ``AgentForbidden``."""
    agent = catalog.product.agents.get(name)
    if agent is None:
        configured = ", ".join(sorted(catalog.product.agents)) or "none"
        raise UnknownAgent(f"unknown agent {name!r}; configured: {configured}")
    if not allowed(catalog, user, agent, default_model):
        raise AgentForbidden(f"user {user!r} may not use agent {name!r}")
    return agent


def effective(conv: ConversationRecord, catalog: Catalog) -> ConversationRecord:
    """``conv`` with its agent's system prompt and options under its own (unchanged if it
    names no agent, or one no longer configured)."""
    c = conv.conversation
    agent = catalog.product.agents.get(c.agent) if c.agent is not None else None
    if agent is None:
        return conv
    merged = msgspec.structs.replace(
        c,
        system_prompt=c.system_prompt if c.system_prompt is not None else agent.system_prompt,
        options={**agent.options, **c.options},
    )
    return msgspec.structs.replace(conv, conversation=merged)

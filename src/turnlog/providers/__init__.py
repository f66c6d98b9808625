"""Model providers behind one seam (``base.Provider``), chosen by ``"provider:name"``.

General layout: ``base`` holds the request/response shapes, the error and the tool specs;
one module per provider (``demo`` for now; ``openai``, ``anthropic`` and ``gemini`` arrive in
their own issue). ``get_provider`` is the only place that maps a model string to a provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from turnlog.config import Settings
from turnlog.providers.base import (
    ASK_USER_TOOL,
    CLOCK_TOOL,
    ChatMessage,
    ModelRequest,
    Provider,
    ProviderError,
    StepEnd,
    ToolSpec,
    UnknownModel,
)
from turnlog.providers.demo import DemoProvider, validate_demo_options

__all__ = [
    "ASK_USER_TOOL",
    "CLOCK_TOOL",
    "ChatMessage",
    "DemoProvider",
    "ModelRequest",
    "Provider",
    "ProviderError",
    "StepEnd",
    "ToolSpec",
    "UnknownModel",
    "get_provider",
    "parse_model",
    "validate_model",
    "validate_options",
]

# Providers of the contract (§5) that this build cannot run yet, with the extra to install
# once their adapters land.
_NOT_YET: Final = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}


def parse_model(model: str) -> tuple[str, str]:
    """``"provider:name"`` as ``(provider, name)``; ``UnknownModel`` if malformed."""
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name or model != model.strip():
        raise UnknownModel(
            f"model must look like 'provider:name' (for example 'demo:default'), got {model!r}"
        )
    return provider, name


def _check_available(provider: str, model: str) -> None:
    if provider == "demo":
        return
    if provider in _NOT_YET:
        raise UnknownModel(
            f"provider {provider!r} of model {model!r} is not available yet in this build"
            f" (its adapter and the '{_NOT_YET[provider]}' extra are not installed);"
            " use 'demo:default'"
        )
    raise UnknownModel(
        f"unknown provider {provider!r} in model {model!r};"
        " expected one of demo, openai, anthropic, gemini"
    )


def validate_model(model: str) -> None:
    """Raise ``UnknownModel`` unless this server can generate with ``model``."""
    provider, _ = parse_model(model)
    _check_available(provider, model)


def validate_options(model: str, options: Mapping[str, Any]) -> None:
    """Raise a readable ``ValueError`` (``UnknownModel`` for the model) on bad ``options``."""
    provider, _ = parse_model(model)
    _check_available(provider, model)
    if provider == "demo":
        validate_demo_options(options)


def get_provider(model: str, settings: Settings) -> tuple[Provider, str]:
    """The provider for ``model`` and the model name to send it (the part after ':')."""
    provider, name = parse_model(model)
    _check_available(provider, model)
    # Only `demo` gets here today; real providers will read their keys from `settings`.
    return DemoProvider(), name

"""Model providers behind one seam (``base.Provider``), chosen by ``"provider:name"``.

General layout: ``base`` holds the request/response shapes, the error, the ``Adapter`` each
provider module exports and the tool specs; one module per provider kind (``demo``,
``openai``, ``anthropic``, ``gemini``), each translating its SDK's stream and errors and
nothing more (retries, timeouts and history rules live in ``turnlog.generation``). Which
providers exist and who may use them is ``turnlog.models.Catalog``. ``get_provider`` is the
only place that maps a model string to a provider.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import msgspec
from turnlog_reducer import StreamEvent

from turnlog.config import Settings
from turnlog.models import Catalog, ModelForbidden, ProviderSpec, UnknownModel, parse_model
from turnlog.providers.base import (
    ASK_USER_TOOL,
    CLOCK_TOOL,
    Adapter,
    ChatMessage,
    ModelRequest,
    Provider,
    ProviderError,
    StepEnd,
    ToolSpec,
)
from turnlog.providers.demo import DemoProvider

__all__ = [
    "ASK_USER_TOOL",
    "CLOCK_TOOL",
    "ChatMessage",
    "DemoProvider",
    "MissingExtra",
    "ModelForbidden",
    "ModelRequest",
    "Provider",
    "ProviderError",
    "StepEnd",
    "ToolSpec",
    "UnknownModel",
    "adapter_for",
    "check_at_start",
    "check_model",
    "get_provider",
    "parse_model",
    "validate_model",
    "validate_options",
]

# kind -> (the module exporting ADAPTER, the pip extra holding its SDK). A new provider kind
# is one line here plus its module.
ADAPTERS: Final[dict[str, tuple[str, str | None]]] = {
    "demo": ("turnlog.providers.demo", None),
    "openai": ("turnlog.providers.openai", "openai"),
    "anthropic": ("turnlog.providers.anthropic", "anthropic"),
    "gemini": ("turnlog.providers.gemini", "gemini"),
}


class MissingExtra(UnknownModel):
    """The provider's SDK is not installed (400, naming the pip command)."""


def adapter_for(kind: str) -> Adapter:
    """The ``Adapter`` of a provider kind, importing its module (and SDK) on first use."""
    module_name, extra = ADAPTERS[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UnknownModel(f"provider kind {kind!r} is not available in this build") from None
        raise MissingExtra(
            f"provider kind {kind!r} needs the {exc.name!r} package, which is not installed:"
            f" pip install 'turnlog[{extra or kind}]'"
        ) from None
    adapter = getattr(module, "ADAPTER", None)
    if not isinstance(adapter, Adapter):
        raise UnknownModel(f"provider kind {kind!r} is not available in this build")
    return adapter


def _options_error(spec: ProviderSpec, exc: Exception) -> str:
    return f"invalid options for provider {spec.name!r} ({spec.kind}): {exc}"


def check_model(catalog: Catalog, user: str | None, model: str, options: Mapping[str, Any]) -> None:
    """Raise unless ``user`` may generate with ``model`` and ``options`` here: ``UnknownModel``
    (a ``ValueError``, 400) for an unknown model, a missing SDK or bad options, and
    ``ModelForbidden`` (403) when the access rules keep ``user`` from it."""
    spec, _ = catalog.resolve(model)
    if user is not None:
        catalog.check_access(user, model)
    if spec.unavailable is not None:
        raise UnknownModel(f"model {model!r} cannot be used: {spec.unavailable}")
    adapter = adapter_for(spec.kind)
    # `cache` is turnlog's own option (the response cache), never sent to a provider.
    if not isinstance(options.get("cache", True), bool):
        raise ValueError(f"option cache must be true or false, got {options['cache']!r}")
    options = {k: v for k, v in options.items() if k != "cache"}
    try:
        msgspec.convert(dict(options), adapter.options)
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise ValueError(_options_error(spec, exc)) from None


def check_at_start(settings: Settings) -> list[str]:
    """What ``turnlog serve`` checks before it starts. Raises ``UnknownModel`` naming
    TURNLOG_DEFAULT_MODEL unless the default model can be used (a model that cannot exist,
    a missing SDK, no key); returns why each other configured provider cannot be used now
    (its key or its SDK missing), for the log."""
    model = settings.default_model
    try:
        spec, _ = settings.models.resolve(model)
        if spec.unavailable is not None:
            raise UnknownModel(spec.unavailable)
        adapter_for(spec.kind)
    except UnknownModel as exc:
        raise UnknownModel(f"TURNLOG_DEFAULT_MODEL={model!r} cannot be used: {exc}") from None
    problems: list[str] = []
    for provider in settings.models.providers.values():
        if provider.unavailable is not None:
            problems.append(provider.unavailable)
            continue
        try:
            adapter_for(provider.kind)
        except UnknownModel as exc:
            problems.append(f"provider {provider.name!r}: {exc}")
    return problems


def validate_model(model: str, settings: Settings | None = None) -> None:
    """Raise ``UnknownModel`` unless this server can generate with ``model``."""
    catalog = settings.models if settings is not None else Catalog.demo_only()
    spec, _ = catalog.resolve(model)
    adapter_for(spec.kind)


def validate_options(
    model: str, options: Mapping[str, Any], settings: Settings | None = None
) -> None:
    """Raise a readable ``ValueError`` (``UnknownModel`` for the model) on bad ``options``."""
    catalog = settings.models if settings is not None else Catalog.demo_only()
    check_model(catalog, None, model, options)


def get_provider(model: str, settings: Settings) -> tuple[Provider, str]:
    """The provider for ``model`` and the model name to send it (the part after ':')."""
    spec, name = settings.models.resolve(model)
    provider = adapter_for(spec.kind).make(spec, settings)
    defaults = spec.defaults.get(name)
    if defaults:
        provider = _WithDefaults(provider, defaults)
    return provider, name


class _WithDefaults:
    """A provider whose configured per-model options apply under the request's own."""

    def __init__(self, inner: Provider, defaults: dict[str, Any]) -> None:
        self.inner = inner
        self.defaults = defaults

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        options = {**self.defaults, **request.options}
        return self.inner.stream(msgspec.structs.replace(request, options=options))

"""The model catalog: which providers exist, the models each offers, who may use which.

Read once at startup from the environment and, when ``TURNLOG_CONFIG``
names one, a TOML file (see ``docs/providers.md``)::

    [providers.local]            # models "local:<name>"
    kind = "openai"              # openai | anthropic | gemini | demo
    base_url = "http://127.0.0.1:8080/v1"
    api_key_env = "LOCAL_KEY"    # the environment variable holding the key (optional)
    models = ["qwen2.5-0.5b"]    # what it offers; left out: any name
    [providers.local.defaults."qwen2.5-0.5b"]
    temperature = 0.2            # per-model default options

    [access]
    default = ["demo:*", "local:*"]       # everyone else; left out: every model
    [access.users]
    alice = ["*"]

Without a file the environment alone makes the providers: ``demo`` always, and ``openai``,
``anthropic``, ``gemini`` when their key or base URL variable is set. A provider named in the
file wins over the one the environment would make under the same name.

This module only knows names and rules; ``turnlog.providers`` turns a provider into an
adapter. Nothing here imports an SDK.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from turnlog.product.config import (
    AgentIn,
    CacheIn,
    NamesAccessIn,
    ProductConfig,
    PromptIn,
    product_config,
)

__all__ = [
    "KINDS",
    "Access",
    "Catalog",
    "ConfigError",
    "ModelForbidden",
    "ProviderSpec",
    "UnknownModel",
    "parse_model",
]

Kind = Literal["openai", "anthropic", "gemini", "demo"]
KINDS: Final = ("openai", "anthropic", "gemini", "demo")

# kind -> (key variable, base URL variable) that make a provider from the environment alone.
ENV_VARS: Final = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "gemini": ("GEMINI_API_KEY", "GEMINI_BASE_URL"),
}


class ConfigError(ValueError):
    """The ``TURNLOG_CONFIG`` file is missing, not TOML, or has a bad shape."""


class UnknownModel(ValueError):
    """A ``model`` string is malformed or names a model this server does not offer (400)."""


class ModelForbidden(ValueError):
    """The user may not use this model (403)."""


class ProviderSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One configured provider, its key already read from the environment."""

    name: str
    kind: Kind
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] | None = None  # None: any model name is passed through
    defaults: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # A key is needed: the file names its variable, or the provider talks to the vendor's
    # own API (no base_url). A local server or gateway at a base_url may need none.
    key_required: bool = False

    def offers(self, name: str) -> bool:
        return self.models is None or name in self.models

    @property
    def unavailable(self) -> str | None:
        """Why no model of this provider can be used now (its key is missing), or None."""
        if self.api_key or not self.key_required:
            return None
        if self.api_key_env:
            return (
                f"provider {self.name!r} has no API key: the variable {self.api_key_env}"
                " is unset or empty where the server runs"
            )
        return (
            f"provider {self.name!r} has no API key: name the variable holding it with"
            f" api_key_env in [providers.{self.name}]"
        )

    def __repr__(self) -> str:
        # Never show the key, wherever a spec ends up printed.
        return f"ProviderSpec(name={self.name!r}, kind={self.kind!r}, base_url={self.base_url!r})"


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """Who may use which models: glob patterns over ``provider:name`` (``*``, ``local:*``)."""

    default: tuple[str, ...] | None = None  # None: every offered model
    users: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)

    def patterns(self, user: str) -> tuple[str, ...] | None:
        return self.users.get(user, self.default)

    def allows(self, user: str, model: str) -> bool:
        patterns = self.patterns(user)
        return patterns is None or any(fnmatch.fnmatchcase(model, p) for p in patterns)


def parse_model(model: str) -> tuple[str, str]:
    """``"provider:name"`` as ``(provider, name)``; ``UnknownModel`` if malformed."""
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name or model != model.strip():
        raise UnknownModel(
            f"model must look like 'provider:name' (for example 'demo:default'), got {model!r}"
        )
    return provider, name


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    """The providers by name, and the access rules."""

    providers: dict[str, ProviderSpec]
    access: Access = msgspec.field(default_factory=Access)
    source: str | None = None  # the TOML file it came from, for messages
    # The file's [limits] table (per-user limits; the environment's variables win).
    limits: dict[str, int] = msgspec.field(default_factory=dict)
    # Agents, prompt commands and the response cache (turnlog.product.config).
    product: ProductConfig = msgspec.field(default_factory=ProductConfig)

    @classmethod
    def demo_only(cls) -> Catalog:
        return cls(providers={"demo": ProviderSpec(name="demo", kind="demo")})

    @classmethod
    def load(cls, env: Mapping[str, str]) -> Catalog:
        """The catalog of the environment ``env`` (and its ``TURNLOG_CONFIG`` file)."""
        providers = dict(cls.demo_only().providers)
        for kind, (key_var, url_var) in ENV_VARS.items():
            if env.get(key_var) or env.get(url_var):
                providers[kind] = ProviderSpec(
                    name=kind,
                    kind=kind,  # type: ignore[arg-type]  # a key of ENV_VARS is a Kind
                    base_url=env.get(url_var) or None,
                    api_key=env.get(key_var) or None,
                    api_key_env=key_var,
                )
        path = env.get("TURNLOG_CONFIG")
        if not path:
            return cls(providers=providers)
        file = _read_file(Path(path))
        for name, raw in file.providers.items():
            providers[name] = _spec(name, raw, env, path)
        catalog = cls(
            providers=providers,
            access=file.access,
            source=path,
            limits=file.limits,
            product=file.product,
        )
        for name, agent in file.product.agents.items():
            if agent.model is not None:
                try:
                    catalog.resolve(agent.model)
                except UnknownModel as exc:
                    raise ConfigError(f"TURNLOG_CONFIG={path!r}: agents.{name}: {exc}") from None
        return catalog

    def resolve(self, model: str) -> tuple[ProviderSpec, str]:
        """The provider and model name of ``model``; ``UnknownModel`` (400) naming it."""
        provider, name = parse_model(model)
        spec = self.providers.get(provider)
        if spec is None:
            hint = ""
            if provider in ENV_VARS:
                key_var, url_var = ENV_VARS[provider]
                hint = f" (set {key_var} or {url_var}, or name it in TURNLOG_CONFIG)"
            raise UnknownModel(
                f"unknown model {model!r}: no provider {provider!r} is configured{hint};"
                f" configured: {', '.join(sorted(self.providers))}"
            )
        if not spec.offers(name):
            assert spec.models is not None
            raise UnknownModel(
                f"unknown model {model!r}: provider {provider!r} offers "
                + ", ".join(repr(f"{provider}:{m}") for m in spec.models)
            )
        return spec, name

    def check_access(self, user: str, model: str) -> None:
        """``ModelForbidden`` (403) unless ``user`` may use ``model``."""
        if not self.access.allows(user, model):
            raise ModelForbidden(f"user {user!r} may not use model {model!r}")

    def listing(self, user: str, default_model: str) -> list[tuple[ProviderSpec, str]]:
        """The models ``user`` may use, as ``(provider, name)``, in a stable order.

        A provider with a ``models`` list offers those; one without (any name goes) shows
        the default model and the exact names the access rules give this user.
        """
        wanted: list[str] = [default_model, *(self.access.patterns(user) or ())]
        seen: set[str] = set()
        out: list[tuple[ProviderSpec, str]] = []
        for spec in self.providers.values():
            names = list(spec.models or ())
            if spec.models is None:
                names = [m.partition(":")[2] for m in wanted if m.partition(":")[0] == spec.name]
                names = [n for n in names if n and not any(c in n for c in "*?[")]
                if spec.kind == "demo" and not names:
                    names = ["default"]
            for name in names:
                model = f"{spec.name}:{name}"
                if model not in seen and self.access.allows(user, model):
                    seen.add(model)
                    out.append((spec, name))
        return out

    def secrets(self) -> tuple[str, ...]:
        """Every API key in use, to scrub from error texts."""
        return tuple(s.api_key for s in self.providers.values() if s.api_key)


# -- the TOML file -------------------------------------------------------------------------


# Tables keyed by a name the user chose (a provider, a user, a model) are read as Any here
# and converted one by one (``_table``), so that an error names the table it is in
# (``providers.claude``) where msgspec would say ``$.providers[...]``.


class _ProviderIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Kind
    base_url: str | None = None
    api_key_env: str | None = None
    models: list[str] | None = None
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)


class _AccessIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    default: list[str] | None = None
    users: dict[str, Any] = msgspec.field(default_factory=dict)
    agents: dict[str, Any] = msgspec.field(default_factory=dict)  # NamesAccessIn


class _LimitsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_concurrent_generations: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_sends_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _FileIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    providers: dict[str, Any] = msgspec.field(default_factory=dict)
    access: _AccessIn = msgspec.field(default_factory=_AccessIn)
    limits: _LimitsIn = msgspec.field(default_factory=_LimitsIn)
    agents: dict[str, Any] = msgspec.field(default_factory=dict)
    prompts: dict[str, Any] = msgspec.field(default_factory=dict)
    cache: dict[str, Any] | None = None


class _File(msgspec.Struct, frozen=True):
    providers: dict[str, _ProviderIn]
    access: Access
    limits: dict[str, int]
    product: ProductConfig


def _read_file(path: Path) -> _File:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"TURNLOG_CONFIG={str(path)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TURNLOG_CONFIG={str(path)!r} is not valid TOML: {exc}") from None
    where = f"TURNLOG_CONFIG={str(path)!r}"
    file = _table(raw, _FileIn, None, where)
    providers: dict[str, _ProviderIn] = {}
    for name, table in file.providers.items():
        if not name or ":" in name or name != name.strip():
            raise ConfigError(f"{where}: bad provider name {name!r}")
        provider = _table(table, _ProviderIn, f"providers.{name}", where)
        for model, options in provider.defaults.items():
            _table(options, dict[str, Any], f"providers.{name}.defaults.{model}", where)
        providers[name] = provider
    users = {
        user: tuple(_table(patterns, list[str], f"access.users.{user}", where))
        for user, patterns in file.access.users.items()
    }
    access = Access(
        default=tuple(file.access.default) if file.access.default is not None else None,
        users=users,
    )
    limits = {k: v for k, v in msgspec.structs.asdict(file.limits).items() if v is not None}
    try:
        product = product_config(
            {n: _table(t, AgentIn, f"agents.{n}", where) for n, t in file.agents.items()},
            _table(file.access.agents, NamesAccessIn, "access.agents", where),
            {n: _table(t, PromptIn, f"prompts.{n}", where) for n, t in file.prompts.items()},
            None if file.cache is None else _table(file.cache, CacheIn, "cache", where),
            where,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return _File(providers, access, limits, product)


def _table(raw: Any, shape: Any, name: str | None, where: str) -> Any:
    """``raw`` converted to ``shape``; a ``ConfigError`` naming table ``name`` (None: the
    file's top level) and the field, as ``providers.claude.models[0]``."""
    try:
        return msgspec.convert(raw, shape)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if name is not None:
            text, at, path = message.rpartition(" - at `$")
            message = f"{text} - at `{name}{path}" if at else f"{message} - in [{name}]"
        raise ConfigError(f"{where}: {message}") from None


def _spec(name: str, raw: _ProviderIn, env: Mapping[str, str], path: str) -> ProviderSpec:
    # The kind's own variable only for a provider named after its kind: a key meant for
    # OpenAI must never be sent to some other OpenAI-compatible server.
    key_var = raw.api_key_env
    if key_var is None and name in ENV_VARS and name == raw.kind:
        key_var = ENV_VARS[name][0]
    if raw.models is not None:
        unknown = sorted(set(raw.defaults) - set(raw.models))
        if unknown:
            raise ConfigError(
                f"TURNLOG_CONFIG={path!r}: providers.{name}.defaults names models it does"
                f" not offer: {', '.join(unknown)}"
            )
    return ProviderSpec(
        name=name,
        kind=raw.kind,
        base_url=raw.base_url,
        api_key=env.get(key_var) or None if key_var else None,
        api_key_env=key_var,
        models=tuple(raw.models) if raw.models is not None else None,
        defaults=raw.defaults,
        key_required=raw.kind != "demo" and (raw.api_key_env is not None or not raw.base_url),
    )

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

Tools (``docs/tools.md``) come from ``[mcp.SERVER]``,
``[python_tools]``, ``[client_tools.NAME]`` and ``[tools]``, and who may use which from
``[access.tools]`` (``default`` and ``users``, the same shape as the models' rules); they are
parsed here into a :class:`ToolsConfig` and turned into tools by ``turnlog.generation.tools``.

Without a file the environment alone makes the providers: ``demo`` always, and ``openai``,
``anthropic``, ``gemini`` when their key or base URL variable is set. A provider named in the
file wins over the one the environment would make under the same name.

This module only knows names and rules; ``turnlog.providers`` turns a provider into an
adapter. Nothing here imports an SDK.
"""

from __future__ import annotations

import fnmatch
import re
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
    "ClientToolConfig",
    "ConfigError",
    "McpServerConfig",
    "McpToolConfig",
    "ModelForbidden",
    "ProviderSpec",
    "ToolsConfig",
    "UnknownModel",
    "parse_model",
]

Kind = Literal["openai", "anthropic", "gemini", "demo"]
Effect = Literal["read_only", "idempotent", "side_effect"]
Approval = Literal["never", "always", "side_effect"]
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
    # How a step cut by a crash is continued (docs/providers.md): the partial answer as the
    # last assistant turn and a user turn asking to go on ("instruct", which every chat API
    # takes), or the partial alone as the last turn for the server to extend ("prefill":
    # llama.cpp's server and Anthropic do; not every OpenAI-compatible server does).
    continuation: Literal["instruct", "prefill"] = "instruct"

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
    # Tools: [mcp.*], [python_tools], [client_tools.*], [tools], [access.tools].
    tools: ToolsConfig = msgspec.field(default_factory=lambda: ToolsConfig())

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
            tools=file.tools,
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
    continuation: Literal["instruct", "prefill"] = "instruct"


class _ToolAccessIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    default: list[str] | None = None
    users: dict[str, list[str]] = msgspec.field(default_factory=dict)


class _AccessIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    default: list[str] | None = None
    users: dict[str, Any] = msgspec.field(default_factory=dict)
    agents: dict[str, Any] = msgspec.field(default_factory=dict)  # NamesAccessIn
    tools: _ToolAccessIn = msgspec.field(default_factory=_ToolAccessIn)


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
    mcp: dict[str, McpServerConfig] = msgspec.field(default_factory=dict)
    python_tools: _PythonToolsIn = msgspec.field(default_factory=lambda: _PythonToolsIn())
    client_tools: dict[str, ClientToolConfig] = msgspec.field(default_factory=dict)
    tools: _ToolsIn = msgspec.field(default_factory=lambda: _ToolsIn())


class _File(msgspec.Struct, frozen=True):
    providers: dict[str, _ProviderIn]
    access: Access
    limits: dict[str, int]
    product: ProductConfig
    tools: ToolsConfig


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
    try:
        tools = _tools(file)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return _File(providers, access, limits, product, tools)


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
        continuation=raw.continuation,
    )


# -- tools ---------------------------------------------------------------------------------

# A tool name every provider accepts: OpenAI and Anthropic take [a-zA-Z0-9_-]{1,64}, Gemini
# also wants a letter or an underscore first.
TOOL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")
# An MCP server's name prefixes its tools' names (SERVER__TOOL), so it may not hold "__".
SERVER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*(?:_[a-zA-Z0-9-]+)*$")


class McpToolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[mcp.SERVER.tools.TOOL]``: what the config says over one MCP tool's annotations."""

    effect: Effect | None = None
    approval: Approval | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class McpServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[mcp.SERVER]``: a stdio server turnlog starts, or a Streamable HTTP one it calls.

    ``env`` and ``headers`` values may hold ``${VAR}``, read from turnlog's environment when
    connecting; they are never logged or shown (see ``__repr__``)."""

    transport: Literal["stdio", "http"]
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    approval: Approval | None = None
    tools: dict[str, McpToolConfig] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:
        where = self.url if self.transport == "http" else self.command
        return f"McpServerConfig(transport={self.transport!r}, {where!r})"


class ClientToolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[client_tools.NAME]``: a tool the client runs (the turn waits for its output)."""

    description: str
    input_schema: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    approval: Approval | None = None


class ToolAccess(msgspec.Struct, frozen=True, kw_only=True):
    """Who may use which tools: globs over tool names, as :class:`Access` for models."""

    default: tuple[str, ...] | None = None  # None: every tool
    users: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)

    def allows(self, user: str, tool: str) -> bool:
        patterns = self.users.get(user, self.default)
        return patterns is None or any(fnmatch.fnmatchcase(tool, p) for p in patterns)


class ToolsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every tool setting of ``TURNLOG_CONFIG``, with its defaults (docs/tools.md)."""

    default: tuple[str, ...] = ("clock", "ask_user")  # a conversation that names none
    approval: Approval = "never"
    max_steps: int = 10
    max_tool_calls: int = 32
    parallel_tool_calls: int = 4
    timeout_s: float = 60.0
    mcp: dict[str, McpServerConfig] = msgspec.field(default_factory=dict)
    python_modules: tuple[str, ...] = ()
    client_tools: dict[str, ClientToolConfig] = msgspec.field(default_factory=dict)
    access: ToolAccess = msgspec.field(default_factory=ToolAccess)


class _PythonToolsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    modules: list[str] = msgspec.field(default_factory=list)


class _ToolsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    default: list[str] | None = None
    approval: Approval = "never"
    max_steps: Annotated[int, msgspec.Meta(ge=1)] = 10
    max_tool_calls: Annotated[int, msgspec.Meta(ge=1)] = 32
    parallel_tool_calls: Annotated[int, msgspec.Meta(ge=1)] = 4
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


def check_input_schema(schema: Any) -> str | None:
    """Why ``schema`` is not a JSON schema of an arguments object (None: it is one).

    Only what every provider needs is checked: an object schema, its ``properties`` an
    object of schemas, its ``required`` a list of names."""
    if not isinstance(schema, dict):
        return f"expected a JSON object, got {type(schema).__name__}"
    if schema.get("type") != "object":
        return f'expected "type": "object" at the top, got {schema.get("type")!r}'
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(v, dict | bool) for v in props.values()):
        return '"properties" must be an object whose values are schemas'
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return '"required" must be a list of property names'
    return None


def _tools(file: _FileIn) -> ToolsConfig:
    """The tool sections of ``file``, checked; ``ValueError`` says what is wrong."""
    for name, server in file.mcp.items():
        if not SERVER_NAME.match(name) or len(name) > 30:
            raise ValueError(
                f"bad MCP server name {name!r}: letters, digits, '-' and single '_', starting"
                " with a letter, at most 30 characters (its tools are named SERVER__TOOL)"
            )
        if server.transport == "stdio" and not server.command:
            raise ValueError(f'mcp.{name}: transport "stdio" needs a command')
        if server.transport == "http" and not server.url:
            raise ValueError(f'mcp.{name}: transport "http" needs a url')
        wrong = [k for k, v in (("command", server.command), ("url", server.url)) if v] + [
            k for k, v in (("args", server.args), ("env", server.env), ("cwd", server.cwd)) if v
        ]
        allowed = {"command", "args", "env", "cwd"} if server.transport == "stdio" else {"url"}
        wrong = [k for k in wrong if k not in allowed]
        if server.transport == "stdio" and server.headers:
            wrong.append("headers")
        if wrong:
            raise ValueError(
                f"mcp.{name}: {', '.join(wrong)} do not apply to transport {server.transport!r}"
            )
    for name, client in file.client_tools.items():
        if not TOOL_NAME.match(name):
            raise ValueError(
                f"client_tools.{name}: a tool name must match {TOOL_NAME.pattern}"
                " (every provider accepts those)"
            )
        why = check_input_schema(client.input_schema)
        if why is not None:
            raise ValueError(f"client_tools.{name}.input_schema is not a JSON schema: {why}")
    t = file.tools
    a = file.access.tools
    return ToolsConfig(
        default=tuple(t.default) if t.default is not None else ToolsConfig().default,
        approval=t.approval,
        max_steps=t.max_steps,
        max_tool_calls=t.max_tool_calls,
        parallel_tool_calls=t.parallel_tool_calls,
        timeout_s=t.timeout_s,
        mcp=file.mcp,
        python_modules=tuple(file.python_tools.modules),
        client_tools=file.client_tools,
        access=ToolAccess(
            default=tuple(a.default) if a.default is not None else None,
            users={u: tuple(p) for u, p in a.users.items()},
        ),
    )

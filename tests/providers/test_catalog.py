"""The model catalog: providers from the environment and TURNLOG_CONFIG, access, options."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from turnlog.config import Settings
from turnlog.models import Catalog, ConfigError, ModelForbidden, UnknownModel
from turnlog.providers import (
    ADAPTERS,
    DemoProvider,
    MissingExtra,
    adapter_for,
    check_model,
    get_provider,
)

TOML = """
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "LOCAL_KEY"
models = ["small", "big"]
[providers.local.defaults.small]
temperature = 0.25

[providers.claude]
kind = "anthropic"
models = ["sonnet"]

[access]
default = ["demo:*", "local:small"]
[access.users]
root = ["*"]
bob = ["local:*"]
"""


def catalog(tmp_path: Path, text: str = TOML, **env: str) -> Catalog:
    path = tmp_path / "turnlog.toml"
    path.write_text(text)
    return Catalog.load({"TURNLOG_CONFIG": str(path), **env})


def test_environment_alone_makes_providers_named_after_their_kind() -> None:
    """Without a file: demo always; openai/anthropic/gemini when a key or base URL is set."""
    assert set(Catalog.load({}).providers) == {"demo"}
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "GEMINI_API_KEY": "g-key-123"}
    cat = Catalog.load(env)
    assert set(cat.providers) == {"demo", "openai", "gemini"}
    spec, name = cat.resolve("openai:anything-goes")
    assert (spec.kind, spec.base_url, spec.api_key, name) == (
        "openai",
        "http://127.0.0.1:1/v1",
        None,
        "anything-goes",
    )
    assert cat.secrets() == ("g-key-123",)


def test_file_names_providers_models_defaults_and_keys(tmp_path: Path) -> None:
    """A TOML provider reads its key from the variable it names; unknown models are 400."""
    cat = catalog(tmp_path, LOCAL_KEY="sk-local-secret", OPENAI_API_KEY="sk-openai")
    spec, name = cat.resolve("local:small")
    assert (spec.kind, spec.api_key, name) == ("openai", "sk-local-secret", "small")
    assert spec.defaults == {"small": {"temperature": 0.25}}
    # A key meant for OpenAI is never sent to another server that did not ask for it.
    assert cat.resolve("claude:sonnet")[0].api_key is None
    assert "sk-local-secret" not in repr(spec)
    with pytest.raises(UnknownModel, match=r"'local:huge'.*'local:small', 'local:big'"):
        cat.resolve("local:huge")
    with pytest.raises(UnknownModel, match="no provider 'nope'"):
        cat.resolve("nope:x")
    with pytest.raises(UnknownModel, match="set OPENAI_API_KEY or OPENAI_BASE_URL"):
        Catalog.load({}).resolve("openai:gpt-4o")


def test_access_default_and_per_user_lists(tmp_path: Path) -> None:
    """The default list applies to users without their own; patterns are globs."""
    cat = catalog(tmp_path)
    cat.check_access("anyone", "local:small")
    cat.check_access("anyone", "demo:default")
    with pytest.raises(ModelForbidden, match="'anyone' may not use model 'local:big'"):
        cat.check_access("anyone", "local:big")
    cat.check_access("bob", "local:big")
    with pytest.raises(ModelForbidden):
        cat.check_access("bob", "demo:default")
    cat.check_access("root", "claude:sonnet")


def test_listing_shows_only_what_the_user_may_use(tmp_path: Path) -> None:
    """GET /v1/models' list: offered models the access rules allow, default model included."""
    cat = catalog(tmp_path)

    def ids(user: str) -> list[str]:
        return [f"{s.name}:{n}" for s, n in cat.listing(user, "demo:default")]

    assert ids("anyone") == ["demo:default", "local:small"]
    assert ids("bob") == ["local:small", "local:big"]
    assert ids("root") == ["demo:default", "local:small", "local:big", "claude:sonnet"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[providers.x]\nkind = 'mystery'\n", "kind"),
        ("[providers.x]\nkind = 'openai'\nflavour = 1\n", "flavour"),
        ("[providers.x]\nkind = 'openai'\nmodels = ['a']\n[providers.x.defaults.b]\nt = 1\n", "b"),
        ("[providers]\nkind = [", "not valid TOML"),
        ("[acess]\n", "acess"),
        ("[providers.claude]\nkind = 3\n", r"providers\.claude"),
        ("[providers.claude]\nkind = 'anthropic'\nmodels = [1]\n", r"providers\.claude\.models"),
        ("[access.users]\nbob = [1]\n", r"access\.users\.bob"),
    ],
)
def test_bad_files_fail_loudly_at_startup(tmp_path: Path, text: str, match: str) -> None:
    """A bad TOML file is a ConfigError naming the file and the fault, read once at startup."""
    with pytest.raises(ConfigError, match=match) as info:
        catalog(tmp_path, text)
    assert "turnlog.toml" in str(info.value)
    assert "[...]" not in str(info.value)  # the table's name, not msgspec's `$.providers[...]`
    with pytest.raises(ValueError, match=match):
        Settings.from_env({"TURNLOG_CONFIG": str(tmp_path / "turnlog.toml")})


def test_options_are_checked_against_the_provider_kind(tmp_path: Path) -> None:
    """Unknown option keys and wrong types are refused with the provider named."""
    cat = catalog(tmp_path)
    check_model(cat, "root", "demo:default", {"length": 3})
    with pytest.raises(ValueError, match=r"provider 'demo'.*colour"):
        check_model(cat, "root", "demo:default", {"colour": "red"})
    with pytest.raises(ModelForbidden):
        check_model(cat, "anyone", "local:big", {})


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_a_missing_sdk_names_the_extra_to_install(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its SDK not importable, a kind's adapter is a 400-kind error naming the extra."""
    if kind == "demo":
        assert adapter_for(kind).options is not None
        return
    sdk = {"openai": "openai", "anthropic": "anthropic", "gemini": "google.genai"}[kind]
    module = ADAPTERS[kind][0]
    # As if the SDK were not installed: an import of a None entry raises ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, sdk, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(UnknownModel) as info:
        adapter_for(kind)
    if not isinstance(info.value, MissingExtra):  # the adapter itself is not written yet
        assert "not available in this build" in str(info.value)
        return
    assert f"pip install 'turnlog[{kind}]'" in str(info.value)


def test_get_provider_applies_the_configured_defaults(tmp_path: Path) -> None:
    """The demo kind under another name still yields the demo provider."""
    settings = Settings(models=catalog(tmp_path, "[providers.toy]\nkind = 'demo'\n"))
    provider, name = get_provider("toy:x", settings)
    assert name == "x"
    assert isinstance(provider, DemoProvider)


def test_limits_come_from_the_file_unless_the_environment_sets_them(tmp_path: Path) -> None:
    """[limits] in TURNLOG_CONFIG sets the per-user limits; an environment variable wins;
    a negative or unknown limit fails at startup."""
    path = tmp_path / "limits.toml"
    path.write_text("[limits]\nmax_concurrent_generations = 2\nmax_sends_per_minute = 30\n")
    s = Settings.from_env({"TURNLOG_CONFIG": str(path)})
    assert (s.max_concurrent_generations, s.max_sends_per_minute) == (2, 30)
    s = Settings.from_env({"TURNLOG_CONFIG": str(path), "TURNLOG_MAX_SENDS_PER_MINUTE": "5"})
    assert (s.max_concurrent_generations, s.max_sends_per_minute) == (2, 5)
    assert Settings.from_env({}).max_concurrent_generations == 0
    for bad in ("max_sends_per_minute = -1", "per_hour = 3"):
        path.write_text(f"[limits]\n{bad}\n")
        with pytest.raises(ValueError, match="limits"):
            Settings.from_env({"TURNLOG_CONFIG": str(path)})


def test_a_provider_whose_key_variable_is_empty_is_unavailable_naming_it(
    tmp_path: Path,
) -> None:
    """A provider whose key variable is unset or empty is listed as unavailable with the
    reason, and a model of it is refused (400) naming the variable; set, it is available."""
    text = "[providers.claude]\nkind = 'anthropic'\napi_key_env = 'CLAUDE_KEY'\n"
    for env in ({}, {"CLAUDE_KEY": ""}):
        cat = catalog(tmp_path, text, **env)
        reason = cat.providers["claude"].unavailable
        assert reason is not None
        assert "CLAUDE_KEY" in reason
        with pytest.raises(UnknownModel, match="CLAUDE_KEY"):
            check_model(cat, "root", "claude:sonnet", {})
    cat = catalog(tmp_path, text, CLAUDE_KEY="k")
    assert cat.providers["claude"].unavailable is None
    check_model(cat, "root", "claude:sonnet", {})
    # A local server that needs no key names no key variable: available.
    local = catalog(tmp_path, "[providers.local]\nkind = 'openai'\nbase_url = 'http://h/v1'\n")
    assert local.providers["local"].unavailable is None

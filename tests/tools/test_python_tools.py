"""Python tools: descriptors from annotations, validation, sync in a thread and async,
ToolContext, and the registry's rules over them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import turnlog
from tests.tools import pytools
from turnlog.generation.tools.execution import cut, idempotency_key, run_calls, run_tool
from turnlog.generation.tools.python import PythonToolError, load_modules, make_tool
from turnlog.generation.tools.registry import (
    ToolContext,
    ToolForbidden,
    ToolRegistry,
    UnknownTool,
)
from turnlog.models import ClientToolConfig, ToolAccess, ToolsConfig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ctx(call: str = "call_1") -> ToolContext:
    return ToolContext(
        user="alice",
        conversation_id="c1",
        message_id="m1",
        tool_call_id=call,
        idempotency_key=idempotency_key("m1", call),
    )


CONFIG = ToolsConfig(python_modules=("tests.tools.pytools",))
TOOLS = {t.name: t for t in load_modules(CONFIG.python_modules, CONFIG)}


def test_only_marked_functions_become_tools() -> None:
    """Every marked function of the module is a tool; unmarked ones are not."""
    assert set(TOOLS) == {"weather", "create_ticket", "distance", "sleepy", "broken", "huge"}


def test_schema_comes_from_the_annotations() -> None:
    """Name, docstring, parameter types, defaults, constraints and descriptions make the
    descriptor; the ToolContext parameter is not part of the schema."""
    w = TOOLS["weather"].descriptor
    assert (w.description, w.source, w.kind, w.effect) == (
        "The weather in a city.",
        "python",
        "server",
        "read_only",
    )
    assert w.input_schema["properties"]["city"] == {"type": "string", "description": "A city name"}
    assert w.input_schema["properties"]["unit"] == {"enum": ["C", "F"], "default": "C"}
    assert w.input_schema["required"] == ["city"]
    assert w.input_schema["additionalProperties"] is False
    t = TOOLS["create_ticket"].descriptor
    assert set(t.input_schema["properties"]) == {"title", "priority"}
    assert t.input_schema["properties"]["priority"]["maximum"] == 5
    assert t.approval is True
    d = TOOLS["distance"].descriptor.input_schema
    assert d["properties"]["a"] == {"$ref": "#/$defs/Point"}
    assert d["$defs"]["Point"]["required"] == ["x", "y"]
    assert TOOLS["sleepy"].timeout_s == 0.3


@pytest.mark.anyio
async def test_sync_tools_run_in_a_worker_thread_and_async_ones_get_the_context() -> None:
    """A sync function runs off the event loop's thread; an async one receives ToolContext
    with the idempotency key of its call."""
    out = await run_tool(TOOLS["weather"], {"city": "Warsaw"}, ctx())
    assert out.content.startswith("sunny in Warsaw, 21 C")
    assert threading.current_thread().name not in out.content
    pytools.CALLS.clear()
    out = await run_tool(TOOLS["create_ticket"], {"title": "fix it", "priority": 2}, ctx("call_9"))
    assert out.content == '{"ticket":1,"title":"fix it","priority":2,"user":"alice"}'
    assert [(idempotency_key("m1", "call_9"), "fix it")] == pytools.CALLS
    out = await run_tool(TOOLS["distance"], {"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}}, ctx())
    assert out.content == "5.0"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"city": 5}, "Expected `str`, got `int` - at `$.city`"),
        ({}, "Object missing required field `city`"),
        ({"city": "x", "extra": 1}, "unknown field `extra`"),
        ({"city": "x", "unit": "K"}, "Invalid enum value 'K' - at `$.unit`"),
        ("Warsaw", "Expected `object`, got `str`"),
    ],
)
async def test_invalid_arguments_are_an_error_result_the_model_can_read(
    arguments: Any, says: str
) -> None:
    """Arguments failing the schema never reach the function: the model reads why."""
    out = await run_tool(TOOLS["weather"], arguments, ctx())
    assert out.is_error
    assert out.content.startswith("error: invalid arguments: ")
    assert says in out.content


@pytest.mark.anyio
async def test_exceptions_timeouts_and_huge_results_are_results() -> None:
    """A raising tool, a tool past its timeout and a 10 MB result all come back as results."""
    out = await run_tool(TOOLS["broken"], {}, ctx())
    assert out.is_error
    assert "RuntimeError: the database is on fire" in out.content
    out = await run_tool(TOOLS["sleepy"], {"seconds": 5}, ctx())
    assert out.is_error
    assert "timeout of 0.3 s" in out.content
    out = await run_tool(TOOLS["huge"], {}, ctx())
    assert not out.is_error
    assert out.content == cut("y" * 10_000_000)
    assert out.content.endswith(
        "[result cut: the tool returned 10000000 characters; only the first 100000 are shown]"
    )


@pytest.mark.anyio
async def test_parallel_calls_come_back_in_call_order() -> None:
    """Calls run concurrently (bounded) and their results keep the order of the calls."""
    calls = [
        (TOOLS["sleepy"], "sleepy", {"seconds": 0.2}, ctx("a")),
        (TOOLS["weather"], "weather", {"city": "Oslo"}, ctx("b")),
        (None, "nope", {}, ctx("c")),
        (TOOLS["weather"], "weather", {"city": "Rome"}, ctx("d")),
    ]
    outs = await run_calls(calls, parallel=4)
    assert outs[0].content == "awake"
    assert "Oslo" in outs[1].content
    assert "Rome" in outs[3].content
    assert outs[2].is_error
    assert "unknown tool 'nope'" in outs[2].content


def test_a_function_without_a_schema_is_refused() -> None:
    """Parameters without annotations, *args, or types with no JSON schema are refused."""

    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> None:
        return None

    def opaque(x: threading.Lock) -> None:
        return None

    for fn in (untyped, star, opaque):
        with pytest.raises(PythonToolError):
            make_tool(turnlog.tool(fn), CONFIG)
    with pytest.raises(PythonToolError, match="cannot be imported"):
        load_modules(("tests.tools.does_not_exist",), CONFIG)


def test_colliding_names_are_a_configuration_error() -> None:
    """A Python tool or a client tool named like another tool stops the server at start."""

    @turnlog.tool
    def clock() -> str:
        return "my clock"

    with pytest.raises(ValueError, match="two tools are named 'clock'"):
        ToolRegistry(CONFIG, python=[make_tool(clock, CONFIG)])
    config = ToolsConfig(client_tools={"weather": ClientToolConfig(description="dup")})
    with pytest.raises(ValueError, match="two tools are named 'weather'"):
        ToolRegistry(config, python=list(TOOLS.values()))

    @turnlog.tool
    def sneaky__tool() -> str:
        return ""

    with pytest.raises(ValueError, match="kept for MCP tools"):
        ToolRegistry(CONFIG, python=[make_tool(sneaky__tool, CONFIG)])


def test_access_and_unknown_names() -> None:
    """A conversation's tools: unknown names and globs are UnknownTool, tools the user may
    not use ToolForbidden; listing and selection follow the access rules."""
    config = ToolsConfig(
        access=ToolAccess(default=("clock", "weather"), users={"root": ("*",)}),
        client_tools={"pick_color": ClientToolConfig(description="Pick a color")},
    )
    reg = ToolRegistry(config, python=list(TOOLS.values()))
    assert [d.name for d in reg.listing("bob")] == ["clock", "weather"]
    assert "pick_color" in [d.name for d in reg.listing("root")]
    reg.check("bob", ["clock", "weath*"])
    with pytest.raises(UnknownTool, match="'nope'"):
        reg.check("bob", ["nope"])
    with pytest.raises(UnknownTool, match="glob"):
        reg.check("bob", ["zzz*"])
    with pytest.raises(ToolForbidden, match="create_ticket"):
        reg.check("bob", ["create_ticket"])
    assert [t.name for t in reg.select("bob", ["*"])] == ["clock", "weather"]
    assert [t.name for t in reg.select("bob", None)] == ["clock"]  # the default, allowed
    pick = reg.get("pick_color")
    assert pick is not None
    assert pick.descriptor.kind == "client"
    assert pick.spec().interactive

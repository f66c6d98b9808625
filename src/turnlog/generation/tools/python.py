"""Python tools: functions of the host application marked with ``turnlog.tool``.

    import turnlog

    @turnlog.tool(effect="side_effect", approval="always", timeout_s=10)
    async def create_ticket(title: str, priority: int = 3, ctx: turnlog.ToolContext) -> str:
        \"\"\"Open a ticket in the tracker.\"\"\"
        ...

The name is the function's, the description its docstring, the input schema comes from the
annotated parameters through msgspec (``Annotated[int, msgspec.Meta(ge=1)]`` constraints and
``description=`` included). Arguments are validated against that schema before the call; an
invalid call is an error result the model can correct. A parameter annotated
``turnlog.ToolContext`` gets the call's context and is not part of the schema. A sync
function runs in a worker thread, never on the event loop; what it returns is the result
(a ``str`` as is, anything else as JSON).

``[python_tools] modules = ["pkg.mod"]`` names the modules to import; every marked function
found in them becomes a tool.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import msgspec

from turnlog.generation.tools.registry import (
    Progress,
    Tool,
    ToolContext,
    ToolDescriptor,
    ToolOutput,
    error_output,
    needs_approval,
)
from turnlog.models import Approval, Effect, ToolsConfig, check_input_schema

__all__ = ["PythonToolError", "ToolContext", "load_modules", "make_tool", "tool"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__turnlog_tool__"


class PythonToolError(ValueError):
    """A marked function cannot be a tool (its parameters have no JSON schema, say)."""


class _Marked(msgspec.Struct, frozen=True):
    effect: Effect
    approval: Approval | None
    timeout_s: float | None


def tool(
    fn: F | None = None,
    *,
    effect: Effect = "side_effect",
    approval: Approval | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Mark ``fn`` as a tool (``@tool`` or ``@tool(effect=..., approval=..., timeout_s=...)``).

    ``effect``: ``read_only`` | ``idempotent`` | ``side_effect`` (the default: assume the
    worst); ``approval``: ``never`` | ``always`` | ``side_effect`` over ``[tools] approval``;
    ``timeout_s`` over ``[tools] timeout_s``. The function itself is returned unchanged."""

    def mark(f: F) -> F:
        setattr(f, _MARK, _Marked(effect, approval, timeout_s))
        return f

    return mark if fn is None else mark(fn)


def _schema_and_args(fn: Callable[..., Any]) -> tuple[dict[str, Any], type[Any], str | None]:
    """The input schema, the Struct that validates arguments, and the context parameter."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise PythonToolError(f"{fn.__qualname__}: its annotations cannot be read: {exc}") from None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    ctx_param: str | None = None
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PythonToolError(f"{fn.__qualname__}: *args and **kwargs have no schema")
        hint = hints.get(p.name)
        if hint is ToolContext:
            ctx_param = p.name
            continue
        if hint is None:
            raise PythonToolError(f"{fn.__qualname__}: parameter {p.name!r} has no annotation")
        if p.default is inspect.Parameter.empty:
            fields.append((p.name, hint))
        else:
            fields.append((p.name, hint, p.default))
    args = msgspec.defstruct(
        f"{fn.__name__}_arguments", fields, kw_only=True, forbid_unknown_fields=True
    )
    try:
        (ref,), defs = msgspec.json.schema_components([args], ref_template="#/$defs/{name}")
    except (TypeError, ValueError) as exc:
        raise PythonToolError(
            f"{fn.__qualname__}: no JSON schema for its parameters: {exc}"
        ) from None
    name = ref["$ref"].rsplit("/", 1)[1]
    schema = dict(defs.pop(name))
    schema.pop("title", None)
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False
    if defs:
        schema["$defs"] = defs
    return schema, args, ctx_param


def make_tool(fn: Callable[..., Any], config: ToolsConfig) -> Tool:
    """The tool of a marked function (``PythonToolError`` if it cannot be one)."""
    marked: _Marked = getattr(fn, _MARK, None) or _Marked("side_effect", None, None)
    schema, args_type, ctx_param = _schema_and_args(fn)
    why = check_input_schema(schema)
    if why is not None:  # pragma: no cover - msgspec always makes an object schema here
        raise PythonToolError(f"{fn.__qualname__}: {why}")
    is_async = inspect.iscoroutinefunction(fn)

    async def run(arguments: Any, ctx: ToolContext, progress: Progress) -> ToolOutput:
        try:
            parsed = msgspec.convert({} if arguments is None else arguments, args_type)
        except msgspec.ValidationError as exc:
            return error_output(f"invalid arguments: {exc}")
        kwargs = {f: getattr(parsed, f) for f in args_type.__struct_fields__}
        if ctx_param is not None:
            kwargs[ctx_param] = ctx
        if is_async:
            result = await fn(**kwargs)
        else:
            # A worker thread: a slow or blocking function never stalls the event loop. On a
            # timeout the thread is abandoned (Python cannot stop it); its result is dropped.
            result = await anyio.to_thread.run_sync(
                functools.partial(fn, **kwargs), abandon_on_cancel=True
            )
        if isinstance(result, str):
            return ToolOutput(result)
        try:
            return ToolOutput(msgspec.json.encode(result).decode())
        except (TypeError, msgspec.EncodeError) as exc:
            return error_output(f"the tool returned a value that is not JSON: {exc}")

    doc = inspect.getdoc(fn) or fn.__name__.replace("_", " ")
    return Tool(
        ToolDescriptor(
            name=fn.__name__,
            description=doc,
            input_schema=schema,
            kind="server",
            source="python",
            effect=marked.effect,
            approval=needs_approval(marked.effect, marked.approval, config.approval),
        ),
        timeout_s=marked.timeout_s or config.timeout_s,
        run=run,
    )


def load_modules(modules: tuple[str, ...], config: ToolsConfig) -> list[Tool]:
    """The tools of every marked function in ``modules`` (imported here)."""
    tools: list[Tool] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise PythonToolError(
                f"python_tools: module {name!r} cannot be imported: {type(exc).__name__}: {exc}"
            ) from None
        for _, value in inspect.getmembers(module, callable):
            if getattr(value, _MARK, None) is not None and getattr(value, "__module__", "") == name:
                tools.append(make_tool(value, config))
    return tools

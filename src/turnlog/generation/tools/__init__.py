"""Tools the server offers models, and what a step's tool calls lead to.

General layout::

    orchestration.py    the tools offered (TOOLS), which the user answers (INTERACTIVE),
                        running a server tool, and the pure rule that turns a completed
                        step's calls into tool rows and the next step
    registry.py         one descriptor shape for every tool source; access; conversation
                        tools checked (unknown, forbidden) and selected for a step
    python.py           ``turnlog.tool``: Python functions as tools (schema, validation)
    mcp.py              MCP servers' tools through the official SDK (one session each)
    execution.py        running calls: timeouts, the result cut, call order, metrics
    running.py          running a completed step's server calls: the turn's limits,
                        ToolCallsStarted stored first, a started side-effect call not again
"""

from turnlog.generation.tools.orchestration import (
    INTERACTIVE,
    TOOLS,
    ToolPlan,
    plan_tools,
    run_server_tool,
    tool_rows,
)

__all__ = ["INTERACTIVE", "TOOLS", "ToolPlan", "plan_tools", "run_server_tool", "tool_rows"]

"""Tools the server offers models, and what a step's tool calls lead to.

General layout::

    orchestration.py    the tools offered (TOOLS), which the user answers (INTERACTIVE),
                        running a server tool, and the pure rule that turns a completed
                        step's calls into tool rows and the next step
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

"""turnlog: an event-sourced generation backend for AI chat.

General layout
--------------
- ``turnlog_reducer`` (the separate ``reducer/`` distribution): the pure fold of stream
  events into content blocks. Server, replay and clients all fold with it.
- ``turnlog.config``: settings read once from the environment.
- ``turnlog.db``: the PostgreSQL connection story: the embedded cluster lifecycle and the
  schema applier.
- ``turnlog.log``: the event log and its projections. ``events`` declares the domain
  events, ``projection`` is the pure fold of them into rows, ``store`` appends events and
  updates projections in one transaction (optimistic concurrency, fencing).
- ``turnlog.replay``: verify / rebuild / show, from the log alone.
- ``turnlog.streams``: the in-memory stream registry (one live stream per generating row).
- ``turnlog.providers``: the model seam (``demo`` and the real providers).
- ``turnlog.generation``: the engine that runs turns: history, steps, checkpoints, tools.
- ``turnlog.http``: the litestar app: routes, auth, SSE.
- ``turnlog.client``: the Python reference client (``AsyncClient`` in ``client_async``, what
  both share in ``client_common``) and the terminal chat (``chat_cli``).
- ``turnlog.cli``: the ``turnlog`` command.

For applications: ``turnlog.tool`` marks a function as a tool the models may call and
``turnlog.ToolContext`` is what such a function may receive about its call (docs/tools.md).
"""

from turnlog.generation.tools.python import tool
from turnlog.generation.tools.registry import ToolContext

__all__ = ["ToolContext", "tool"]
__version__ = "0.1.0"

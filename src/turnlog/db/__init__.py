"""The database: schema and migrations (``schema``), and the embedded PostgreSQL used when
``TURNLOG_DATABASE_URL`` is unset (``embedded``)."""

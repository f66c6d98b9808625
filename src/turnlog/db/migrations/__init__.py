"""Numbered schema migrations ``NNNN_description.sql``, applied in order after schema.sql.

schema.sql is version 1. A migration must upgrade an existing database without losing data;
it runs inside the same transaction and advisory lock as schema.sql.
"""

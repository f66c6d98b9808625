"""The event log and its projections.

- ``events``: the domain events, the only facts turnlog stores.
- ``projection``: the pure fold of those facts into conversation and message rows.
- ``store``: appends events and updates the rows they touch in one transaction, and reads
  them; its parts: ``fold`` (the pure batch fold), ``memory`` (what it remembers),
  ``group_commit``, ``statements`` (the write SQL), ``rows`` (the mapper).
- ``instances``: instances, leases, orphans and liveness; ``liveness`` keeps this
  process's lock.
- ``pool``: the connection pool, bounded in time.
"""

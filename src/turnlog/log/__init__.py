"""The event log and its projections.

- ``events``: the domain events, the only facts turnlog stores.
- ``projection``: the pure fold of those facts into conversation and message rows.
- ``store``: appends events and updates the rows they touch in one transaction.
"""

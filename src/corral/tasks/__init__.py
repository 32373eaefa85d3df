"""Deferred tasks (CBSD's `cbsd task`): the SQLite task store, the states with their explicit
transition table, and the runner that executes queued tasks.

Must never import: agent, cli, migration, cluster, lab.
"""

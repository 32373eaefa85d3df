"""Live migration: preflight checks, convergence policy (pure functions), orchestrator,
journal and recovery.

Must never import: agent, cli, lab. Talks to hypervisors only through the driver contract.
"""

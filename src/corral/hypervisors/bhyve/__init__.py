"""The bhyve driver (FreeBSD), built from bhyve's documented behaviour.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

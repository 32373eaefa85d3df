"""The QEMU driver: command lines, processes and QMP (through qemu.qmp).

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

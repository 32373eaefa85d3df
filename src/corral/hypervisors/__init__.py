"""Hypervisor drivers behind one contract (base.py): QEMU/KVM on Linux, bhyve on FreeBSD.

A driver knows nothing of clusters, tasks or agents; hypervisor quirks stop here.
Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

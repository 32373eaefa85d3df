"""Storage: the identity files of the data, config and system directories, filesystem
detection (NFS, GlusterFS, Ceph, local) and disk copy for non-shared storage.

Must never import: agent, cli, migration, cluster, tasks, lab.
"""

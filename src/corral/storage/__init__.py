"""Storage: the identity files of the data, config and system directories, filesystem
detection (NFS, GlusterFS, Ceph, local).

Must never import: agent, cli, migration, cluster, tasks, lab.
"""

"""VMs of one node: their directories (CBSD's data, config and system dirs), the spec a person
writes and the spec a driver runs, the records in the node's database, and the service that
drives their lifecycle and checkpoints through a hypervisor driver.

A layer between the services above (agent, migration) and the drivers and storage below.
Must never import: agent, cli, migration, cluster, lab.
"""

"""Cluster membership: the certificate authority and certificates, join tokens, the node
registry and the client an agent uses to talk to its peers.

Must never import: agent, cli, migration, lab.
"""

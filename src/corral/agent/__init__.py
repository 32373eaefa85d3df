"""The per-node daemon (CBSD's cbsdd): HTTP API with OpenAPI, mutual-TLS auth, task runner.

Holds: the FastAPI application, its routes under /v1, the unix-socket and HTTPS servers.
Calls the services below it (migration, cluster, tasks, storage, hypervisors).
Must never import: cli, lab.
"""

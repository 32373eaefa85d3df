"""The lab: a whole cluster on one machine, built from Linux network namespaces, and the
small Linux test guest booted in it (like `kind` for Kubernetes).

Used by the demo, the tests and the benchmarks. May use the hypervisor drivers to boot the
test guest; nothing in the product layers may import it.
"""

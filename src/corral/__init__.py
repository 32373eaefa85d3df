"""corral: a cluster manager for virtual machines whose headline job is live migration.

Layers, arrows pointing down (see docs/architecture.md)::

    cli/ -> agent/ -> migration/ -> cluster/, tasks/, storage/ -> hypervisors/
    model.py, errors.py, config.py: shared value types, the error tree, settings
    lab/: the one-machine lab cluster and the test guest; never imported by the layers
"""

__version__ = "0.1.0"

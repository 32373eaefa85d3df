"""Choosing QEMU's accelerator: KVM where it works, found by a probe rather than by the
presence of /dev/kvm (a nested or paravirtual /dev/kvm may exist and not work); TCG elsewhere.

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import os

from corral.hypervisors.qemu.facts import probe_qemu


def resolve_accelerator(setting: str) -> str:
    """ "kvm" or "tcg" for the setting "auto", "kvm" or "tcg"."""
    if setting != "auto":
        return setting
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    offer = probe_qemu("kvm")
    # A usable KVM offers the ordinary CPU models without unavailable features.
    return "kvm" if offer.version and "qemu64" in offer.cpu_models else "tcg"

"""What a bhyve host is (sysctl, the CPU features in dmesg.boot, vmm.ko, what bhyvectl was
built with) and whether a VM may move between two such hosts.

bhyve cannot mask CPUID, so a guest only moves between hosts with the same machine, CPU model
and features and page size (the FreeBSD-UPB migration checks machine, model and page size
itself, at the start of the stream; corral refuses before anything starts).

Must never import: agent, cli, migration, cluster, tasks, storage, lab.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Any

from corral.errors import HypervisorError
from corral.hypervisors.base import HostFacts
from corral.hypervisors.bhyve.host import BhyveHost
from corral.model import VmSpec

SYSCTLS = (
    "hw.machine",
    "hw.machine_arch",
    "hw.model",
    "hw.physmem",
    "hw.pagesize",
    "hw.ncpu",
    "kern.osrelease",
    "vm.stats.vm.v_free_count",
)
FEATURES_RE = re.compile(r"Features\d*=0x[0-9a-fA-F]+<([^>]*)>")
ORIGIN_RE = re.compile(r'Origin\s*=\s*"([^"]+)"')


@dataclass(frozen=True)
class BhyveOffer:
    """What bhyve can do on this host."""

    sysctl: dict[str, str]
    vendor: str
    cpu_flags: tuple[str, ...]
    vmm_loaded: bool
    snapshot: bool  # bhyvectl --checkpoint/--suspend, bhyve -r (BHYVE_SNAPSHOT)
    migration: bool  # bhyvectl --migrate, bhyve -R (the FreeBSD-UPB work)
    live_migration: bool  # bhyvectl --migrate-live
    maxcpu: int | None = None  # hw.vmm.maxcpu: the most vCPUs a VM may have (vmm.ko loaded)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.sysctl["hw.machine"],
            "maxcpu": self.maxcpu,
            "pagesize": int(self.sysctl["hw.pagesize"]),
            "vmm": self.vmm_loaded,
            "snapshot": self.snapshot,
            "migration": self.migration,
            "live_migration": self.live_migration,
        }


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as exc:
        raise HypervisorError(f"{argv[0]} is not installed") from exc


def parse_cpu(dmesg: str) -> tuple[str, tuple[str, ...]]:
    """The CPU vendor and its sorted feature flags from FreeBSD's boot messages."""
    vendor = m.group(1) if (m := ORIGIN_RE.search(dmesg)) else ""
    flags = {
        flag.strip().lower()
        for match in FEATURES_RE.finditer(dmesg)
        for flag in match.group(1).split(",")
        if flag.strip()
    }
    return vendor, tuple(sorted(flags))


def parse_usage(usage: str) -> tuple[bool, bool, bool]:
    """(snapshot, migration, live migration) from bhyvectl's usage text."""
    return "--checkpoint" in usage, "--migrate" in usage, "--migrate-live" in usage


def probe(host: BhyveHost) -> BhyveOffer:
    """:raise HypervisorError: this is no bhyve host (sysctl answers no hw.* we need)."""
    out = _run([host.sysctl, "-n", *SYSCTLS])
    values = out.stdout.splitlines()
    if out.returncode != 0 or len(values) != len(SYSCTLS):
        raise HypervisorError(f"sysctl could not describe this host: {out.stderr.strip()}")
    try:
        dmesg = host.dmesg_boot.read_text(errors="replace")
    except FileNotFoundError:
        dmesg = ""
    vendor, flags = parse_cpu(dmesg)
    vmm = _run([host.kldstat, "-q", "-m", "vmm"]).returncode == 0
    usage = _run([host.bhyvectl])  # no arguments: the usage, listing what it was built with
    snapshot, migration, live = parse_usage(usage.stdout + usage.stderr)
    limit = _run([host.sysctl, "-n", "hw.vmm.maxcpu"]) if vmm else None  # vmm.ko's own
    maxcpu = int(limit.stdout) if limit and limit.returncode == 0 and limit.stdout.strip() else None
    return BhyveOffer(
        dict(zip(SYSCTLS, values, strict=True)),
        vendor,
        flags,
        vmm,
        snapshot,
        migration,
        live,
        maxcpu,
    )


def host_facts(offer: BhyveOffer) -> HostFacts:
    s = offer.sysctl
    page = int(s["hw.pagesize"])
    return HostFacts(
        arch=s["hw.machine_arch"],
        cpu_vendor=offer.vendor,
        cpu_model=s["hw.model"],
        cpu_flags=offer.cpu_flags,
        hypervisor="bhyve",
        hypervisor_version=s["kern.osrelease"],
        accelerator="vmm" if offer.vmm_loaded else "none",
        memory_total_mib=int(s["hw.physmem"]) >> 20,
        memory_free_mib=int(s["vm.stats.vm.v_free_count"]) * page >> 20,
        cpu_count=int(s["hw.ncpu"]),
        extra={"bhyve": offer.to_json()},
    )


def compatible(
    spec: VmSpec, source: dict[str, Any], target: dict[str, Any]
) -> list[tuple[str, str]]:
    """(code, message) for each reason `spec` cannot move from `source` to `target`."""
    if target.get("hypervisor") != "bhyve":
        return [("hypervisor", f"the target runs {target.get('hypervisor')}, not bhyve")]
    src = source.get("extra", {}).get("bhyve", {})
    dst = target.get("extra", {}).get("bhyve", {})
    reasons: list[tuple[str, str]] = []
    for node, side in (("source", src), ("target", dst)):
        if not side.get("vmm"):
            reasons.append(("vmm", f"vmm.ko is not loaded on the {node} (kldload vmm)"))
        if not side.get("migration"):
            reasons.append(
                ("bhyve-migration", f"bhyve on the {node} was built without migration support")
            )
    if source.get("arch") != target.get("arch") or src.get("machine") != dst.get("machine"):
        reasons.append(
            ("arch", f"the source is {source.get('arch')}, the target {target.get('arch')}")
        )
    if source.get("cpu_model") != target.get("cpu_model"):
        reasons.append(
            (
                "cpu",
                "bhyve cannot mask CPUID, so the CPUs must match: the source has"
                f" {source.get('cpu_model')!r}, the target {target.get('cpu_model')!r}",
            )
        )
    elif source.get("cpu_flags") != target.get("cpu_flags"):
        missing = sorted(set(source.get("cpu_flags", [])) ^ set(target.get("cpu_flags", [])))
        reasons.append(("cpu", f"the CPUs' features differ: {', '.join(missing[:8])}"))
    limit = dst.get("maxcpu")
    if isinstance(limit, int) and spec.cpu.count > limit:
        reasons.append(
            (
                "vcpus",
                f"the VM has {spec.cpu.count} vCPUs; bhyve on the target allows {limit}"
                " (hw.vmm.maxcpu)",
            )
        )
    if src.get("pagesize") != dst.get("pagesize"):
        reasons.append(
            ("pagesize", f"page sizes differ: {src.get('pagesize')} and {dst.get('pagesize')}")
        )
    return reasons

"""Shared value types: the VM spec and its parts. Validated with pydantic v2, so a bad spec
is refused with the field named before anything is created.

Must never import any other layer of corral.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
AUTO = "auto"  # "let corral choose the node" (placement): so no node may be named it
MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="letters, digits, '_', '.', '-'")]


def _host_path(value: Path) -> Path:
    text = str(value)
    if not value.is_absolute():
        raise ValueError("must be an absolute path")
    if len(text) > 4096:
        raise ValueError("longer than 4096 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain control characters (a newline, say)")
    return value


# A file on the host: absolute, no control characters, at most PATH_MAX. What may reach a
# command line is decided by each builder (QEMU gets JSON; bhyve refuses a ',').
HostPath = Annotated[Path, AfterValidator(_host_path)]


class Frozen(BaseModel):
    """A value type: immutable, and unknown fields are an error rather than ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CpuTopology(Frozen):
    """vCPUs as sockets x cores x threads; the product is the vCPU count."""

    sockets: int = Field(1, ge=1, le=64)
    cores: int = Field(1, ge=1, le=256)
    threads: int = Field(1, ge=1, le=8)

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


class CpuSpec(Frozen):
    """The guest CPU: count, topology and a named model every node can offer (never `host`)."""

    count: int = Field(1, ge=1, le=1024)
    topology: CpuTopology | None = None
    model: str = Field("qemu64", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.,+=-]*$")

    @field_validator("model")
    @classmethod
    def _not_host(cls, value: str) -> str:
        if value in {"host", "max"}:
            raise ValueError(f"CPU model {value!r} cannot migrate; name a model such as qemu64")
        return value

    @model_validator(mode="after")
    def _topology_matches(self) -> Self:
        if self.topology is not None and self.topology.vcpus != self.count:
            t = self.topology
            raise ValueError(
                f"topology {t.sockets} sockets x {t.cores} cores x {t.threads} threads"
                f" = {t.vcpus} vCPUs, but count is {self.count}"
            )
        return self

    @property
    def effective_topology(self) -> CpuTopology:
        return self.topology or CpuTopology(sockets=1, cores=self.count, threads=1)


class DiskSpec(Frozen):
    """A virtio disk backed by an image file; `size_mib` is set when corral created it."""

    path: HostPath
    format: str = Field("qcow2", pattern=r"^(qcow2|raw)$")
    size_mib: int | None = Field(None, ge=1, le=64 * 1024 * 1024)
    cache_direct: bool = True


class NicSpec(Frozen):
    """A virtio-net NIC on a tap device attached to a bridge; the MAC is generated once."""

    bridge: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    mac: str = Field(pattern=MAC_PATTERN)
    tap: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")


class BootSpec(Frozen):
    """Direct kernel boot (kernel + initrd + command line)."""

    kernel: HostPath
    initrd: HostPath | None = None
    cmdline: str = ""


class VmSpec(Frozen):
    """Everything needed to run one VM."""

    name: Name
    memory_mib: int = Field(256, ge=16, le=4 * 1024 * 1024)
    cpu: CpuSpec = CpuSpec()
    machine: str = Field("pc-q35-7.2", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    boot: BootSpec | None = None


def spec_digest(spec: VmSpec) -> str:
    """A short hash of everything in `spec`: equal digests mean the same virtual machine."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def generate_mac(rng: random.Random | None = None) -> str:
    """A random locally administered unicast MAC in QEMU's 52:54:00 range."""
    r = rng or random.SystemRandom()
    return "52:54:00:" + ":".join(f"{r.randrange(256):02x}" for _ in range(3))


def is_valid_name(name: str) -> bool:
    """True when `name` is acceptable as a VM or node name."""
    return re.fullmatch(NAME_PATTERN, name) is not None

"""The VM spec a person writes (`VmRequest`: a TOML file or CLI flags) and its resolution into
the spec a driver runs (`VmSpec`): MACs generated once, disk paths in the data directory,
tap names derived from the VM's name."""

from __future__ import annotations

import hashlib
import tomllib
from typing import Self

from pydantic import Field, ValidationError, model_validator

from corral.errors import UserInputError
from corral.model import (
    MAC_PATTERN,
    BootSpec,
    CpuSpec,
    DiskSpec,
    Frozen,
    HostPath,
    Name,
    NicSpec,
    VmSpec,
    generate_mac,
)
from corral.vms.directories import NodeDirectories


class DiskRequest(Frozen):
    """Either a new image of `size_mib` in the VM's data directory (qcow2 unless `format`
    says raw, which bhyve needs), or an existing image at `path`."""

    size_mib: int | None = Field(None, ge=1, le=64 * 1024 * 1024)
    path: HostPath | None = None
    format: str = Field("qcow2", pattern=r"^(qcow2|raw)$")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.size_mib is None) == (self.path is None):
            raise ValueError("give either size_mib (a new image) or path (an existing one)")
        return self


class NicRequest(Frozen):
    bridge: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    mac: str | None = Field(None, pattern=MAC_PATTERN)


class VmRequest(Frozen):
    """A VM as a person describes it."""

    name: Name
    memory_mib: int = Field(256, ge=16, le=4 * 1024 * 1024)
    cpu: CpuSpec = CpuSpec()
    machine: str = Field("pc-q35-7.2", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    disks: tuple[DiskRequest, ...] = Field((), max_length=16)
    nics: tuple[NicRequest, ...] = Field((), max_length=8)
    boot: BootSpec | None = None


def tap_name(vm: str, index: int) -> str:
    """A tap name for NIC `index` of `vm`: short (15 bytes at most) and the same on every
    node, derived from the name so it never needs storing."""
    return f"vt{hashlib.sha1(vm.encode()).hexdigest()[:8]}{index}"


def resolve(request: VmRequest, dirs: NodeDirectories) -> VmSpec:
    """The runnable spec of `request` on a node with directories `dirs`."""
    disks = tuple(
        DiskSpec(path=d.path, format=d.format)
        if d.path is not None
        else DiskSpec(
            path=dirs.disk_path(request.name, i, d.format), format=d.format, size_mib=d.size_mib
        )
        for i, d in enumerate(request.disks)
    )
    nics = tuple(
        NicSpec(bridge=n.bridge, mac=n.mac or generate_mac(), tap=tap_name(request.name, i))
        for i, n in enumerate(request.nics)
    )
    return VmSpec(
        name=request.name,
        memory_mib=request.memory_mib,
        cpu=request.cpu,
        machine=request.machine,
        disks=disks,
        nics=nics,
        boot=request.boot,
    )


def _first_error(exc: ValidationError) -> UserInputError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "spec"
    return UserInputError(field, first["msg"])


def load_request(text: str, source: str = "spec") -> VmRequest:
    """A VmRequest from TOML text.

    :raise UserInputError: not TOML, or a field is invalid (named).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(source, f"not valid TOML: {exc}") from exc
    try:
        return VmRequest.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from exc

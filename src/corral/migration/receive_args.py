"""The receive task's arguments: what the source asks of the target, as one model the source
builds and the target's task kind validates (before anything is queued)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.model import NAME_PATTERN, VmSpec

StorageRole = Literal["data", "config", "system"]


class DiskCopy(BaseModel):
    """A disk the source copies: the target creates it empty, of the same virtual size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, le=255, description="the disk's place in the spec")
    virtual_bytes: int = Field(gt=0, le=64 * 1024**4)


class ReceiveArgs(BaseModel):
    """`migration.receive`: start `spec` waiting for its state and listen for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    migration_id: str = Field(pattern=r"^[0-9a-f]{1,64}$", description="the source's journal")
    spec: VmSpec
    source: str = Field(pattern=NAME_PATTERN, description="the source node, for the logs")
    tls: bool = Field(True, description="False: the source opted out (--insecure)")
    parallel: int = Field(1, ge=1, le=16, description="multifd channels")
    postcopy: bool = False
    timeout_s: float = Field(3600, gt=0, le=7 * 86_400, description="how long to wait")
    storage: dict[StorageRole, str | None] = Field(
        default_factory=dict,
        description="the storage identities preflight compared; checked again here",
    )
    disks: tuple[DiskCopy, ...] = Field(
        (), description="local disks the source copies (--with-local-disks), served over NBD"
    )

    @model_validator(mode="after")
    def _disks_of_the_spec(self) -> ReceiveArgs:
        indexes = [d.index for d in self.disks]
        if len(set(indexes)) != len(indexes) or any(i >= len(self.spec.disks) for i in indexes):
            raise ValueError(f"disks: {indexes} are not distinct disks of the spec")
        return self

"""What a person may ask of a migration, with the defaults documented in docs/migration.md."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.migration.policy import OnTimeout, PolicyLimits, completion_timeout
from corral.model import NAME_PATTERN

MIB = 1024 * 1024


class MigrationOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vm: str = Field(pattern=NAME_PATTERN)
    target: str = Field(pattern=NAME_PATTERN)
    bandwidth_mib: int = Field(
        0, ge=0, le=1024 * 1024, description="MiB/s the stream may use; 0: unlimited"
    )
    initial_downtime_ms: int = Field(300, ge=10, le=60_000)
    max_downtime_ms: int = Field(
        1000, ge=10, le=60_000, description="the policy raises the limit up to this"
    )
    parallel: int = Field(1, ge=1, le=16, description="multifd channels; 1: one stream")
    postcopy: bool = Field(False, description="allow switching to post-copy")
    auto_converge: bool = Field(True, description="allow throttling the guest's vCPUs")
    timeout_s: float | None = Field(
        None, gt=0, le=86_400, description="completion timeout; default per GiB"
    )
    timeout_per_gib_s: float = Field(120, gt=0, le=86_400)
    on_timeout: OnTimeout = OnTimeout.ABORT
    insecure: bool = Field(False, description="send memory (and disks) without TLS")
    with_local_disks: bool = Field(
        False, description="copy the disks the target does not share while the VM runs"
    )
    keep_source_disks: bool = Field(
        False, description="keep the source's copied disk images after a success"
    )
    drop_checkpoints: bool = Field(
        False, description="delete the checkpoints that cannot move, with the move"
    )

    @model_validator(mode="after")
    def _disk_flags_need_the_copy(self) -> MigrationOptions:
        for name in ("keep_source_disks", "drop_checkpoints"):
            if getattr(self, name) and not self.with_local_disks:
                raise ValueError(f"{name} applies only with with_local_disks")
        return self

    def limits(self, ram_bytes: int) -> PolicyLimits:
        timeout = self.timeout_s or completion_timeout(ram_bytes, self.timeout_per_gib_s)
        return PolicyLimits(
            initial_downtime_ms=self.initial_downtime_ms,
            max_downtime_ms=max(self.max_downtime_ms, self.initial_downtime_ms),
            auto_converge=self.auto_converge,
            allow_postcopy=self.postcopy,
            completion_timeout_s=timeout,
            on_timeout=self.on_timeout,
        )

"""The agent's settings: documented defaults, then a TOML file, then environment variables
(`CORRAL_<NAME>`, e.g. CORRAL_NODE_NAME), then command-line flags; later ones win.

Example `/etc/corral/agent.toml` (every key optional)::

    node_name = "node1"          # default: the host name
    address = "10.0.0.1"         # where peers reach this agent (and it listens)
    api_port = 4710              # HTTPS with mutual TLS: peers and remote CLIs
    join_port = 4711             # HTTPS, token-authenticated: only POST /v1/join
    state_dir = "/var/lib/corral"    # SQLite database, PKI, task logs
    storage_dir = "/var/lib/corral/storage"  # default parent of the three VM directories
    data_dir = "/var/lib/corral/storage/data"      # VM disks (may be shared storage)
    config_dir = "/var/lib/corral/storage/config"  # VM specs (may be shared storage)
    system_dir = "/var/lib/corral/storage/system"  # checkpoints (may be shared storage)
    image_dirs = ["/srv/images"]  # where a VM's disk, kernel or initrd may be (default: data_dir)
    hypervisor = "auto"          # qemu, bhyve, or auto: bhyve on FreeBSD, QEMU elsewhere
    bhyve_root = "/"             # where bhyve's tools and /dev/vmm are (a simulator in tests)
    accelerator = "auto"         # kvm, tcg, or auto: kvm when QEMU can use it here
    cpu_models = ["qemu64", "Westmere"]  # offer only these CPU models (default: all QEMU can)
    run_dir = "/run/corral"      # unix socket, VM runtime files
    max_parallel_tasks = 2
    heartbeat_interval = 2.0     # seconds between heartbeats to each peer
    offline_after = 6.0          # a peer not heard from this long is offline (default: 3 beats)
    state = "gossip"             # or "etcd": membership, online state, VM ownership in etcd
    etcd_endpoints = ["https://10.0.0.9:2379"]  # with state = "etcd" (mutual TLS, cluster CA)
    crl_file = "/var/lib/corral/crl.der"  # the CA holder keeps the revocation list here (etcd)
"""

from __future__ import annotations

import contextlib
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.cluster.etcd_endpoints import parse_endpoints
from corral.errors import UserInputError
from corral.model import AUTO, NAME_PATTERN
from corral.vms.directories import NodeDirectories

DEFAULT_CONFIG = Path("/etc/corral/agent.toml")
ENV_PREFIX = "CORRAL_"


def _hostname() -> str:
    name = socket.gethostname().split(".")[0]
    return name or "node"


class AgentSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    node_name: str = Field(default_factory=_hostname, pattern=NAME_PATTERN)
    address: str = "127.0.0.1"
    api_port: int = Field(4710, ge=1, le=65535)
    join_port: int = Field(4711, ge=1, le=65535)
    state_dir: Path = Path("/var/lib/corral")
    storage_dir: Path = Path("/var/lib/corral/storage")
    run_dir: Path = Path("/run/corral")
    data_dir: Path | None = None
    config_dir: Path | None = None
    system_dir: Path | None = None
    image_dirs: tuple[Path, ...] | None = None
    hypervisor: str = Field("auto", pattern=r"^(auto|qemu|bhyve)$")
    bhyve_root: Path = Path("/")
    accelerator: str = Field("auto", pattern=r"^(auto|kvm|tcg)$")
    cpu_models: tuple[str, ...] | None = None
    max_parallel_tasks: int = Field(2, ge=1, le=64)
    heartbeat_interval: float = Field(2.0, gt=0, le=300)
    offline_after: float = Field(0.0, ge=0, le=3600)  # 0: three heartbeat intervals
    state: str = Field("gossip", pattern=r"^(gossip|etcd)$")
    etcd_endpoints: tuple[str, ...] = ()
    crl_file: Path | None = None  # the CA holder writes the revocation list here (for etcd)

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """CORRAL_ETCD_ENDPOINTS=https://a:2379,https://b:2379 (the environment's form)."""
        return [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _etcd_needs_endpoints(self) -> AgentSettings:
        if self.state == "etcd":
            parse_endpoints(list(self.etcd_endpoints))  # UserInputError names the setting
        return self

    @property
    def lease_ttl(self) -> int:
        """The etcd lease's TTL, in whole seconds (etcd's unit): two thirds of the offline
        time, at least 2 (etcd's shortest with its default election timeout). A dead node's
        lease ends within it, etcd notices within half a second, and the others read it at
        their next beat (`beat_interval`): all within the offline time."""
        return max(2, int(self.offline_after * 2 / 3))

    @property
    def beat_interval(self) -> float:
        """How often the agent beats: its heartbeat interval; with etcd, also at least three
        times per lease TTL (a renewal lost to a slow moment is not the lease lost)."""
        if self.state == "etcd":
            return min(self.heartbeat_interval, self.lease_ttl / 3)
        return self.heartbeat_interval

    @model_validator(mode="before")
    @classmethod
    def _offline_after_three_beats(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("offline_after"):
            interval = data.get("heartbeat_interval") or 2.0
            with contextlib.suppress(TypeError, ValueError):
                data = {**data, "offline_after": 3 * float(interval)}
        return data

    @field_validator("node_name")
    @classmethod
    def _not_a_keyword(cls, name: str) -> str:
        if name == AUTO:
            raise ValueError(f"{AUTO!r} means 'let corral choose a node'; name the node otherwise")
        return name

    @property
    def directories(self) -> NodeDirectories:
        return NodeDirectories(
            data=self.data_dir or self.storage_dir / "data",
            config=self.config_dir or self.storage_dir / "config",
            system=self.system_dir or self.storage_dir / "system",
            run=self.run_dir,
        )

    @property
    def allowed_image_dirs(self) -> tuple[Path, ...]:
        """Where a VM's disk, kernel or initrd may lie (`image_dirs`, else the data dir)."""
        return self.image_dirs or (self.directories.data,)

    @property
    def private_dirs(self) -> tuple[Path, ...]:
        """What no VM may ever read: the agent's state (database, keys) and run files."""
        return (self.state_dir, self.run_dir)

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "corral.db"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def task_log_dir(self) -> Path:
        return self.state_dir / "tasks"


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> AgentSettings:
    """Merge defaults, the TOML file, the environment and `overrides` (flags).

    :raise UserInputError: the file is not TOML, or a setting is invalid (named).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or (Path(env["CORRAL_CONFIG"]) if "CORRAL_CONFIG" in env else None)
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise UserInputError("config", f"{path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UserInputError("config", f"{path} is not valid TOML: {exc}") from exc
    for name in AgentSettings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return AgentSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise UserInputError(field, first["msg"]) from exc

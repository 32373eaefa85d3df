"""The test guest image: a Debian kernel and a busybox initramfs, built once and cached.

The kernel comes from the `linux-image-*` package that Debian's `linux-image-amd64` depends
on (downloaded with `apt-get download`, never installed); the initramfs holds a static
busybox, the virtio modules and the guest scripts of `guest/`. See docs/test-guest.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corral import commands
from corral.errors import EnvironmentProblem
from corral.lab.cpio_archive import CpioEntry, pack_initramfs

BUILDER_VERSION = 1
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
# Load order matters: each module needs the ones before it.
VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
)
GUEST_SCRIPTS = {  # path in the guest -> file in corral/lab/guest
    "init": "init.sh",
    "bin/counter-stream": "counter-stream.sh",
    "bin/dirty-mem": "dirty-mem.sh",
    "bin/disk-seq": "disk-seq.sh",
    "bin/disk-pattern": "disk-pattern.sh",
    "bin/disk-writer": "disk-writer.sh",
}


@dataclass(frozen=True)
class GuestImage:
    """A built test guest: boot it with `kernel`, `initrd` and `guest_cmdline(...)`."""

    kernel: Path
    initrd: Path
    kernel_package: str
    key: str


def guest_cmdline(
    ip: str | None = None,
    port: int = 7000,
    dirty_mib: int = 0,
    disk: str | None = None,
    pattern: str | None = None,
    disk_write_mib: int = 0,
) -> str:
    """The kernel command line that configures the test guest (see guest/init.sh)."""
    words = ["console=ttyS0", "quiet", "panic=-1", f"corral.port={port}"]
    if ip:
        words.append(f"corral.ip={ip}")
    if dirty_mib:
        words.append(f"corral.dirty={dirty_mib}")
    if disk:
        words.append(f"corral.disk={disk}")
    if pattern:
        words.append(f"corral.pattern={pattern}")
    if disk_write_mib:
        words.append(f"corral.diskwrite={disk_write_mib}")
    return " ".join(words)


def parse_kernel_package(apt_cache_depends: str) -> str:
    """The versioned kernel package named in `apt-cache depends linux-image-amd64` output."""
    match = re.search(r"Depends:\s*(linux-image-\d[\w.+-]*)", apt_cache_depends)
    if match is None:
        raise EnvironmentProblem(
            f"cannot find the kernel package that {KERNEL_META_PACKAGE} depends on;"
            " run 'apt-get update' first"
        )
    return match.group(1)


def guest_scripts() -> dict[str, bytes]:
    """The guest's scripts, by their path inside the guest."""
    folder = resources.files("corral.lab") / "guest"
    return {dest: (folder / src).read_bytes() for dest, src in GUEST_SCRIPTS.items()}


def image_key(busybox: bytes, scripts: dict[str, bytes]) -> str:
    """The cache key: changes whenever busybox, a script or the builder changes."""
    h = hashlib.sha256(f"builder={BUILDER_VERSION}".encode())
    h.update(hashlib.sha256(busybox).digest())
    for name in sorted(scripts):
        h.update(name.encode() + b"\0" + hashlib.sha256(scripts[name]).digest())
    return h.hexdigest()[:16]


def check_static(binary: bytes, path: Path) -> None:
    """Refuse a dynamically linked busybox: the initramfs has no libc."""
    if not binary.startswith(b"\x7fELF"):
        raise EnvironmentProblem(f"{path} is not an ELF binary")
    if b"ld-linux" in binary[:4096]:
        raise EnvironmentProblem(
            f"{path} is dynamically linked; install busybox-static (make deps)"
        )


def initramfs_entries(
    busybox: bytes, scripts: dict[str, bytes], modules: dict[str, bytes]
) -> list[CpioEntry]:
    """The initramfs members: directories, console node, busybox, scripts, modules."""
    entries = [
        CpioEntry.directory(d)
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "run", "tmp")
    ]
    entries.append(CpioEntry.chardev("dev/console", 5, 1))
    entries.append(CpioEntry.file("bin/busybox", busybox, 0o755))
    entries.append(CpioEntry.symlink("bin/sh", "busybox"))
    for dest, data in scripts.items():
        entries.append(CpioEntry.file(dest, data, 0o755))
    order = [m for m in VIRTIO_MODULES if m in modules]
    entries.append(CpioEntry.file("etc/corral-modules", "\n".join(order).encode() + b"\n"))
    for name in order:
        entries.append(CpioEntry.file(f"lib/modules/{name}.ko", modules[name]))
    return entries


def extract_kernel(deb: Path) -> tuple[bytes, dict[str, bytes]]:
    """The vmlinuz and the virtio modules inside a kernel .deb, read as a stream."""
    wanted = {f"{m}.ko" for m in VIRTIO_MODULES}
    vmlinuz: bytes | None = None
    modules: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile():
                    continue
                if base.startswith("vmlinuz-") and "/boot/" in member.name:
                    vmlinuz = _read_member(tar, member)
                elif base in wanted and "/lib/modules/" in member.name:
                    modules[base[:-3]] = _read_member(tar, member)
    if vmlinuz is None:
        raise EnvironmentProblem(f"{deb.name} holds no /boot/vmlinuz-*")
    # A module missing here is built into this kernel: nothing to load for it.
    return vmlinuz, modules


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


class GuestImageBuilder:
    """Builds the test guest into `cache/guest/KEY/` once; later calls reuse it."""

    def __init__(self, cache: Path, busybox: Path = BUSYBOX) -> None:
        self.root = cache / "guest"
        self.busybox = busybox

    def _inputs(self) -> tuple[bytes, dict[str, bytes], str]:
        if not self.busybox.exists():
            raise EnvironmentProblem(f"{self.busybox} is missing; install busybox-static")
        busybox = self.busybox.read_bytes()
        check_static(busybox, self.busybox)
        scripts = guest_scripts()
        return busybox, scripts, image_key(busybox, scripts)

    def cached(self) -> GuestImage | None:
        """The image already built for the current inputs, if any."""
        _, _, key = self._inputs()
        return self._load(self.root / key)

    def _load(self, folder: Path) -> GuestImage | None:
        manifest = folder / "manifest.json"
        if not manifest.exists():
            return None
        info = json.loads(manifest.read_text())
        return GuestImage(
            folder / "vmlinuz", folder / "initrd.img", str(info["kernel_package"]), folder.name
        )

    def build(self, *, force: bool = False) -> GuestImage:
        """Return the cached image, building it first when needed (or when `force`)."""
        busybox, scripts, key = self._inputs()
        folder = self.root / key
        if not force and (image := self._load(folder)) is not None:
            return image
        depends = commands.run(["apt-cache", "depends", KERNEL_META_PACKAGE]).stdout
        package = parse_kernel_package(depends)
        with tempfile.TemporaryDirectory(prefix="corral-image-") as tmp:
            Path(tmp).chmod(stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
            commands.run(["apt-get", "download", package], timeout=600, cwd=tmp)
            debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if not debs:
                raise EnvironmentProblem(f"apt-get download {package} produced no .deb")
            vmlinuz, modules = extract_kernel(debs[0])
            deb_name = debs[0].name
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / "vmlinuz").write_bytes(vmlinuz)
        (staging / "initrd.img").write_bytes(
            pack_initramfs(initramfs_entries(busybox, scripts, modules))
        )
        (staging / "manifest.json").write_text(
            json.dumps(
                {
                    "kernel_package": package,
                    "kernel_deb": deb_name,
                    "modules": sorted(modules),
                    "built_at": time.time(),
                    "key": key,
                },
                indent=2,
            )
        )
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        image = self._load(folder)
        assert image is not None
        return image

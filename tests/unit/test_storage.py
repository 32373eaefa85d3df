"""Storage identity files and filesystem detection."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from corral.errors import EnvironmentProblem
from corral.storage.filesystem import mount_of, parse_mountinfo
from corral.storage.identity import IDENTITY_FILE, ensure_identity, read_identity

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
40 22 0:35 / /mnt/nfs rw - nfs4 server:/export rw,vers=4.2
41 22 0:36 / /mnt/gluster rw - fuse.glusterfs 10.0.0.1:/vol rw
42 22 0:37 / /mnt/ceph rw - ceph 10.0.0.2:/ rw
43 22 0:38 / /mnt/with\\040space rw - nfs srv:/x rw,vers=3
"""


def test_mountinfo_is_parsed_with_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.fstype for m in mounts] == ["ext4", "nfs4", "fuse.glusterfs", "ceph", "nfs"]
    assert mounts[-1].mount_point == Path("/mnt/with space")


@pytest.mark.parametrize(
    ("path", "label", "shared"),
    [
        ("/var/lib/corral", "local (ext4)", False),
        ("/mnt/nfs/vms/data", "NFS v4", True),
        ("/mnt/gluster/x", "GlusterFS", True),
        ("/mnt/ceph", "CephFS", True),
        ("/mnt/with space/a", "NFS v3", True),
        ("/mnt/nfsother", "local (ext4)", False),
    ],
)
def test_the_deepest_mount_holding_a_path_decides(path: str, label: str, shared: bool) -> None:
    mount = mount_of(Path(path), MOUNTINFO)
    assert (mount.label, mount.shared) == (label, shared)


def test_identity_is_written_once_and_read_back(tmp_path: Path) -> None:
    first = ensure_identity(tmp_path / "data", "data", "node1")
    again = ensure_identity(tmp_path / "data", "data", "node2")
    assert again == first
    assert first.created_by == "node1"
    assert read_identity(tmp_path / "data") == first
    assert read_identity(tmp_path / "elsewhere") is None


def test_nodes_racing_on_shared_storage_agree_on_one_identity(tmp_path: Path) -> None:
    found = []

    def claim(node: str) -> None:
        found.append(ensure_identity(tmp_path / "shared", "data", node))

    threads = [threading.Thread(target=claim, args=(f"node{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({f.id for f in found}) == 1
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [IDENTITY_FILE]


def test_a_damaged_identity_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(EnvironmentProblem, match="damaged"):
        read_identity(tmp_path)


def test_freebsd_mount_p_is_read_in_the_same_words() -> None:
    """FreeBSD's `mount -p` (fstab format): NFS v4 is `nfs` with the nfsv4 option, FUSE
    filesystems are `fusefs.SUBTYPE`; a space in a path is written \\040."""
    from corral.storage.filesystem import parse_fstab_listing

    listing = (
        "/dev/ada0p2\t/\tufs\trw\t1 1\n"
        "nas:/export/vms\t/var/lib/corral\tnfs\trw,nfsv4\t0 0\n"
        "nas:/old\t/mnt/old\tnfs\trw,nfsv3\t0 0\n"
        "gl1:/vol\t/mnt/my\\040gluster\tfusefs.glusterfs\trw\t0 0\n"
    )
    mounts = parse_fstab_listing(listing)
    assert [(str(m.mount_point), m.fstype, m.shared) for m in mounts] == [
        ("/", "ufs", False),
        ("/var/lib/corral", "nfs4", True),
        ("/mnt/old", "nfs", True),
        ("/mnt/my gluster", "fuse.glusterfs", True),
    ]
    assert mounts[1].label == "NFS v4"

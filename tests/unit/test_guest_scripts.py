"""The guest's own scripts, run on the host under busybox: the disk-sequence checker really
reports a lost write, and the counter stream really counts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lab.image import BUSYBOX, guest_scripts
from corral.waiting import wait_for

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed")


@pytest.fixture
def busybox_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds busybox applets only, as in the guest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in ("sh", "dd", "head", "tr", "printf", "usleep", "echo", "cat"):
        (bin_dir / applet).symlink_to(BUSYBOX)
    return {"PATH": str(bin_dir)}


def _start(
    script: str, args: list[str], env: dict[str, str], tmp: Path, out: Path
) -> subprocess.Popen[bytes]:
    path = tmp / script.replace("/", "_")
    path.write_bytes(guest_scripts()[script])
    return subprocess.Popen(
        [str(BUSYBOX), "sh", str(path), *args],
        env=env,
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_disk_seq_reports_a_write_that_was_lost(
    tmp_path: Path, busybox_env: dict[str, str], stopper: list[subprocess.Popen[bytes]]
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    out = tmp_path / "out.log"
    stopper.append(_start("bin/disk-seq", [str(disk)], busybox_env, tmp_path, out))
    wait_for(lambda: "DISKSEQ 20" in out.read_text(), timeout=30, what="20 writes")
    assert "DISKSTART 0" in out.read_text()
    assert "DISKERR" not in out.read_text()
    # Roll the disk back to an old value, as a lost write would.
    with disk.open("r+b") as handle:
        handle.write(b"3".ljust(511) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    wait_for(lambda: "DISKERR" in out.read_text(), timeout=30, what="the lost write to show")
    error = next(ln for ln in out.read_text().splitlines() if ln.startswith("DISKERR"))
    assert error.endswith("got 3")


def test_disk_seq_continues_from_the_value_on_disk(
    tmp_path: Path, busybox_env: dict[str, str], stopper: list[subprocess.Popen[bytes]]
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"1234".ljust(511) + b"\n" + b"\0" * 3584)
    out = tmp_path / "out.log"
    stopper.append(_start("bin/disk-seq", [str(disk)], busybox_env, tmp_path, out))
    wait_for(lambda: "DISKSEQ 1240" in out.read_text(), timeout=30, what="writes")
    assert out.read_text().splitlines()[0] == "DISKSTART 1234"
    assert "DISKERR" not in out.read_text()


def test_counter_stream_prints_increasing_sequence_and_uptime(
    tmp_path: Path, busybox_env: dict[str, str], stopper: list[subprocess.Popen[bytes]]
) -> None:
    out = tmp_path / "out.log"
    stopper.append(_start("bin/counter-stream", [], busybox_env, tmp_path, out))
    wait_for(lambda: len(out.read_text().splitlines()) >= 4, timeout=30, what="4 lines")
    lines = out.read_text().splitlines()[:4]
    fields = [line.split() for line in lines]
    assert [f[0] for f in fields] == ["COUNTER"] * 4
    assert [int(f[1]) for f in fields] == [1, 2, 3, 4]
    uptimes = [float(f[2]) for f in fields]
    assert uptimes == sorted(uptimes)
    assert uptimes[-1] > uptimes[0]


def test_disk_pattern_checks_every_block_and_reports_one_a_copy_missed(
    tmp_path: Path, busybox_env: dict[str, str], stopper: list[subprocess.Popen[bytes]]
) -> None:
    for applet in ("yes", "cat"):
        if not (Path(busybox_env["PATH"]) / applet).exists():
            (Path(busybox_env["PATH"]) / applet).symlink_to(BUSYBOX)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as empty:
        empty.truncate(8 * 1024 * 1024)
    out = tmp_path / "out.log"
    stopper.append(_start("bin/disk-pattern", [str(disk), "8"], busybox_env, tmp_path, out))
    wait_for(lambda: "PATPASS 2 7" in out.read_text(), timeout=60, what="two passes")
    assert "PATERR" not in out.read_text()  # pass 2 read back every block of pass 1
    data = disk.read_bytes()
    for i in range(1, 8):  # each block holds its own line, of a recent pass, all 4 KiB of it
        line = data[i << 20 : (i << 20) + 4096].split(b"\n")[0]
        assert line.startswith(f"PAT {i} ".encode()), line
        assert data[i << 20 : (i << 20) + 4096] == (line + b"\n") * 512
    # Every block as a copy that missed it would leave it: zeros. The block being rewritten
    # at that moment may be written over before it is read: every other one must show.
    with disk.open("r+b") as zeroed:
        for i in range(1, 8):
            zeroed.seek(i << 20)
            zeroed.write(b"\0" * 4096)
        zeroed.flush()
        os.fsync(zeroed.fileno())

    def missed() -> set[str]:
        return {ln.split()[2] for ln in out.read_text().splitlines() if ln.startswith("PATERR")}

    wait_for(lambda: len(missed()) >= 6, timeout=60, what="the missed blocks to show")


def test_disk_writer_writes_random_mebibytes_at_about_its_rate(
    tmp_path: Path, busybox_env: dict[str, str], stopper: list[subprocess.Popen[bytes]]
) -> None:
    for applet in ("usleep", "dd"):
        if not (Path(busybox_env["PATH"]) / applet).exists():
            (Path(busybox_env["PATH"]) / applet).symlink_to(BUSYBOX)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as empty:
        empty.truncate(10 * 1024 * 1024)
    out = tmp_path / "out.log"
    stopper.append(_start("bin/disk-writer", [str(disk), "40", "8"], busybox_env, tmp_path, out))
    wait_for(lambda: "DISKWROTE 8 " in out.read_text(), timeout=30, what="8 MiB written")
    data = disk.read_bytes()
    assert data[: 1 << 20] == bytes(1 << 20)  # the first MiB is disk-seq's: never written
    written = [i for i in range(1, 9) if data[i << 20 : (i + 1) << 20] != bytes(1 << 20)]
    assert len(written) >= 3  # random places within the span
    assert len(data) == 10 << 20  # nothing past the end

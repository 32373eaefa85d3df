"""A user's mistake gets a one-line message naming what was wrong and a non-zero exit code,
never a traceback, and changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, check=False
    )


def test_help_lists_the_lab_commands() -> None:
    out = corral("lab", "--help")
    assert out.returncode == 0
    for command in ("image", "up", "down", "status", "demo"):
        assert command in out.stdout


def test_zero_nodes_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    out = corral("lab", "up", "--nodes", "0", "--root", str(tmp_path / "lab"))
    assert out.returncode == 2
    assert "nodes: must be between 1 and 50" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "lab").exists()


def test_a_network_that_is_not_one_is_refused(tmp_path: Path) -> None:
    out = corral("lab", "up", "--guest-net", "10.0.0.300/24", "--root", str(tmp_path))
    assert out.returncode == 2
    assert "--guest-net" in out.stderr
    assert "Traceback" not in out.stderr


def test_status_without_a_lab_says_so(tmp_path: Path) -> None:
    out = corral("lab", "status", "--root", str(tmp_path / "none"))
    assert out.returncode in (3, 5)  # 5 when not root: the lab needs root before anything
    assert "Traceback" not in out.stderr
    assert "lab" in out.stderr


def test_version_prints_the_package_version() -> None:
    from corral import __version__

    assert corral("version").stdout.strip() == __version__


def test_disk_copy_options_without_the_copy_are_refused_before_any_agent_is_asked() -> None:
    for flag in ("--keep-source-disks", "--drop-checkpoints"):
        out = corral("migrate", "web1", "node2", flag)
        assert out.returncode == 2, out.stderr
        assert f"{flag}: applies only with --with-local-disks" in out.stderr
        assert "Traceback" not in out.stderr

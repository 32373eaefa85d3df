"""When the supervisor takes bhyve's exit 0 for a reboot, and when for a VM that left."""

from __future__ import annotations

import json
from pathlib import Path

from corral.hypervisors.bhyve.supervisor import departed, without_state_source


def test_a_reboot_boots_afresh_not_from_the_checkpoint_or_stream() -> None:
    argv = ["bhyve", "-m", "64M", "-r", "/ck/state", "-R", "127.0.0.1,1", "vm"]
    assert without_state_source(argv) == ["bhyve", "-m", "64M", "vm"]


def test_exit_0_without_a_marker_is_a_reboot(tmp_path: Path) -> None:
    assert departed(tmp_path) is None


def test_exit_0_after_a_completed_send_is_a_departure(tmp_path: Path) -> None:
    (tmp_path / "departing").write_text("")
    (tmp_path / "send.json").write_text(json.dumps({"state": "completed"}))
    assert departed(tmp_path) == "migrated away"


def test_exit_0_during_a_failed_send_is_never_restarted(tmp_path: Path) -> None:
    (tmp_path / "departing").write_text("")
    (tmp_path / "send.json").write_text(json.dumps({"state": "failed"}))
    assert departed(tmp_path) is not None  # the VM may run on the target: not restarted


def test_exit_0_after_a_suspend_is_a_departure_only_once_saved(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "suspending").write_text(str(state))
    assert departed(tmp_path) is None  # nothing saved: it was a reboot
    Path(f"{state}.meta").write_text("{}")
    assert departed(tmp_path) == "suspended to a checkpoint"

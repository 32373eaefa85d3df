"""The plan's estimate: the stream rate and the fixed part learnt from past migrations to the
same node, what the guest has touched as what the first pass sends, and nothing guessed."""

from __future__ import annotations

import pytest

from corral.migration.estimate import PastMigration, disk_estimate, estimate, learnt, relevant
from corral.migration.options import MIB, MigrationOptions

GIB = 1024 * MIB
LIMITS = MigrationOptions(vm="v", target="t").limits(GIB)


def test_past_migrations_give_the_stream_rate_and_the_fixed_part() -> None:
    past = [
        PastMigration(total_s=1.5, hypervisor_ms=1000, bytes_sent=300 * MIB),  # 300 MiB/s
        PastMigration(total_s=1.0, hypervisor_ms=500, bytes_sent=100 * MIB),  # 200 MiB/s
        PastMigration(total_s=2.3, hypervisor_ms=2000, bytes_sent=800 * MIB),  # 400 MiB/s
    ]
    rate, fixed = learnt(past)
    assert rate == pytest.approx(300 * MIB)
    assert fixed == pytest.approx(0.5)  # medians of 0.5, 0.5 and 0.3 s
    found = estimate(
        GIB,
        LIMITS,
        resident_bytes=150 * MIB,
        dirty_bytes_per_s=0,
        link_bytes_per_s=60 * MIB,  # the agents' probe: not what QEMU's stream gets
        past=past,
    )
    assert found["bandwidth_bytes_per_s"] == 300 * MIB
    assert found["basis"] == "3 past migration(s) of any VM to this node"
    assert found["to_send_bytes"] == 150 * MIB  # only what the guest touched
    assert found["copy_s"] == pytest.approx(0.5)
    assert found["expected_s"] == pytest.approx(1.0)  # the copy and the fixed part


def test_without_history_the_probe_gives_the_rate_and_the_fixed_part_stays_unknown() -> None:
    found = estimate(
        GIB, LIMITS, resident_bytes=None, dirty_bytes_per_s=0, link_bytes_per_s=100 * MIB
    )
    assert str(found["basis"]).startswith("the link probe")
    assert found["to_send_bytes"] == GIB  # nothing known of the guest: all of its RAM
    assert found["fixed_s"] is None
    assert found["expected_s"] == pytest.approx(10.24)


def test_a_guest_dirtying_faster_than_the_stream_does_not_converge() -> None:
    found = estimate(
        GIB,
        LIMITS,
        resident_bytes=GIB,
        dirty_bytes_per_s=400 * MIB,
        link_bytes_per_s=0,
        past=[PastMigration(total_s=2, hypervisor_ms=1000, bytes_sent=300 * MIB)],
    )
    assert found["converges"] is False
    assert found["expected_s"] is None
    assert found["within_timeout"] is False


def test_nothing_measured_means_nothing_estimated() -> None:
    found = estimate(
        GIB, LIMITS, resident_bytes=None, dirty_bytes_per_s=None, link_bytes_per_s=None
    )
    assert found["bandwidth_bytes_per_s"] == 0
    assert "expected_s" not in found  # not guessed
    assert found["fixed_s"] is None


def test_a_summary_without_the_numbers_is_not_history() -> None:
    assert PastMigration.from_summary({"total_s": 1.0}) is None
    past = PastMigration.from_summary({"total_s": 1.2, "qemu_total_ms": 0, "bytes_sent": 5})
    assert past is not None
    assert past.stream_bytes_per_s is None  # a zero time gives no rate
    assert learnt([past]) == (None, 1.2)


def test_the_vms_own_free_running_migrations_are_learnt_from_first() -> None:
    other = PastMigration(total_s=9, hypervisor_ms=1000, bytes_sent=MIB, vm="big")
    capped = PastMigration(total_s=90, hypervisor_ms=89000, bytes_sent=GIB, vm="web", free=False)
    own = PastMigration(total_s=1.2, hypervisor_ms=1000, bytes_sent=200 * MIB, vm="web")
    chosen, basis = relevant([other, capped, own], "web")
    assert chosen == [own]  # not another VM's, not one slowed by --bandwidth or the policy
    assert basis == "1 past migration(s) of this VM to this node"
    chosen, basis = relevant([other, capped], "web")
    assert chosen == [other]  # no free run of its own: the other VMs' free ones
    assert basis.endswith("of any VM to this node")
    assert relevant([capped], "web") == (
        [capped],
        "1 past migration(s) of this VM to this node, slowed by a cap or the policy",
    )


def test_a_summary_says_whether_the_run_was_free() -> None:
    base = {"total_s": 1.0, "qemu_total_ms": 800, "bytes_sent": MIB, "vm": "web"}
    assert PastMigration.from_summary({**base, "bandwidth_mib": 0, "policy_actions": []}) == (
        PastMigration(1.0, 800, MIB, "web", free=True)
    )
    capped = PastMigration.from_summary({**base, "bandwidth_mib": 16})
    throttled = PastMigration.from_summary({**base, "policy_actions": ["auto-converge engaged"]})
    assert capped is not None
    assert not capped.free
    assert throttled is not None
    assert not throttled.free


def test_a_past_disk_copy_gives_the_disk_rate_and_is_not_counted_as_fixed_time() -> None:
    summary = {
        "total_s": 12.0,
        "qemu_total_ms": 2000,
        "bytes_sent": 200 * MIB,
        "vm": "a",
        "disks": {"copy_s": 8.0, "data_bytes": 400 * MIB},
    }
    past = PastMigration.from_summary(summary)
    assert past is not None
    assert past.disk_bytes_per_s == 50 * MIB
    assert past.fixed_s == pytest.approx(12.0 - 2.0 - 8.0)  # the copy is not overhead
    learnt_rate = disk_estimate(100 * MIB, 1, link_bytes_per_s=10 * MIB, past=[past])
    assert learnt_rate["copy_s"] == 2.0  # at the past copy's 50 MiB/s, not the probe's
    assert str(learnt_rate["basis"]).startswith("1 past disk copies")
    probed = disk_estimate(100 * MIB, 1, link_bytes_per_s=10 * MIB, past=[])
    assert probed["copy_s"] == 10.0
    capped = disk_estimate(100 * MIB, 1, link_bytes_per_s=None, bandwidth_cap_bytes_per_s=0)
    assert capped["copy_s"] is None  # nothing measured: nothing guessed


def test_a_guest_holding_zero_pages_is_predicted_as_its_own_past_move_ran() -> None:
    # Measured on the lab (bench/results/plan-accuracy.json): an idle 256 MiB guest held
    # 122 MiB, its migration sent 81 MiB (resident zero pages go as headers) in QEMU's
    # 317 ms, 0.426 s in all. The same guest, as resident as before, takes about as long.
    summary = {
        "total_s": 0.426,
        "qemu_total_ms": 317,
        "bytes_sent": 81 * MIB,
        "resident_bytes": 122 * MIB,
        "vm": "idle",
    }
    past = PastMigration.from_summary(summary)
    assert past is not None
    assert past.resident_bytes == 122 * MIB
    found = estimate(
        256 * MIB,
        LIMITS,
        resident_bytes=122 * MIB,
        dirty_bytes_per_s=0,
        link_bytes_per_s=None,
        past=[past],
        vm="idle",
    )
    assert found["expected_s"] == pytest.approx(0.426, abs=0.01)  # not 0.58: 122/81 longer
    # A summary from before the resident bytes were recorded: the bytes sent, as before.
    old = PastMigration.from_summary({k: v for k, v in summary.items() if k != "resident_bytes"})
    assert old is not None
    assert old.resident_bytes is None
    assert old.stream_bytes_per_s == pytest.approx(81 * MIB / 0.317)
    # A guest that dirties sends more than it holds: the bytes sent, its real rate.
    busy = PastMigration(
        total_s=2.0, hypervisor_ms=1500, bytes_sent=300 * MIB, resident_bytes=200 * MIB
    )
    assert busy.stream_bytes_per_s == pytest.approx(200 * MIB)

"""Agent settings: defaults, then TOML, then environment, then flags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corral.agent.settings import AgentSettings, load_settings
from corral.errors import UserInputError


def test_defaults_are_documented_values(tmp_path: Path) -> None:
    s = load_settings(None, {"node_name": "n1"}, environ={})
    assert (s.api_port, s.join_port, s.max_parallel_tasks) == (4710, 4711, 2)
    assert s.socket_path == Path("/run/corral/agent.sock")
    assert s.database_path == Path("/var/lib/corral/corral.db")


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('node_name = "fromfile"\napi_port = 5000\njoin_port = 5001\n')
    s = load_settings(conf, {}, environ={"CORRAL_API_PORT": "6000"})
    assert (s.node_name, s.api_port, s.join_port) == ("fromfile", 6000, 5001)
    s = load_settings(conf, {"api_port": 7000}, environ={"CORRAL_API_PORT": "6000"})
    assert s.api_port == 7000


def test_config_file_from_environment(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('node_name = "envfile"\n')
    assert load_settings(None, {}, environ={"CORRAL_CONFIG": str(conf)}).node_name == "envfile"


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text("this is [not toml\n")
    with pytest.raises(UserInputError, match="not valid TOML"):
        load_settings(conf, {}, environ={})


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        load_settings(tmp_path / "none.toml", {}, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [("api_port", 0), ("node_name", "a/b"), ("max_parallel_tasks", 0), ("colour", "red")],
)
def test_bad_settings_name_the_setting(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(UserInputError) as info:
        load_settings(None, {key: value}, environ={})
    assert info.value.field == key


def test_the_agent_picks_bhyve_on_freebsd_and_qemu_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from corral.agent import node_agent
    from corral.hypervisors.bhyve.driver import BhyveDriver
    from corral.hypervisors.qemu.driver import QemuDriver

    auto = load_settings(None, {"node_name": "n1", "bhyve_root": str(tmp_path)}, environ={})
    monkeypatch.setattr(sys, "platform", "freebsd14")
    chosen = node_agent.choose_driver(auto)
    assert isinstance(chosen, BhyveDriver)
    assert chosen.host.root == tmp_path
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(node_agent, "resolve_accelerator", lambda _: "tcg")
    assert isinstance(node_agent.choose_driver(auto), QemuDriver)
    forced = load_settings(None, {"node_name": "n1", "hypervisor": "bhyve"}, environ={})
    assert isinstance(node_agent.choose_driver(forced), BhyveDriver)
    with pytest.raises(UserInputError, match="hypervisor"):
        load_settings(None, {"node_name": "n1", "hypervisor": "xen"}, environ={})


def test_a_peer_is_offline_after_three_heartbeats_unless_configured() -> None:
    assert AgentSettings(node_name="n1").offline_after == 6.0
    assert AgentSettings(node_name="n1", heartbeat_interval=1.0).offline_after == 3.0
    chosen = AgentSettings(node_name="n1", heartbeat_interval=1.0, offline_after=5.0)
    assert chosen.offline_after == 5.0


def test_etcd_state_needs_https_endpoints_and_its_lease_follows_the_offline_time() -> None:
    with pytest.raises(UserInputError, match="etcd-endpoints: at least one"):
        load_settings(None, {"node_name": "n1", "state": "etcd"}, environ={})
    with pytest.raises(UserInputError, match="TLS is required"):
        load_settings(
            None,
            {"node_name": "n1", "state": "etcd", "etcd_endpoints": ["http://10.0.0.9:2379"]},
            environ={},
        )
    with pytest.raises(UserInputError) as info:
        load_settings(None, {"node_name": "n1", "state": "raft"}, environ={})
    assert info.value.field == "state"
    settings = load_settings(
        None,
        {"node_name": "n1", "state": "etcd", "etcd_endpoints": ["https://10.0.0.9:2379"]},
        environ={"CORRAL_OFFLINE_AFTER": "4.5"},
    )
    assert settings.lease_ttl == 3  # two thirds of the offline time, in whole seconds
    assert settings.beat_interval == 1.0  # three renewals a lease (the heartbeat is 2 s)
    assert AgentSettings(node_name="n1", heartbeat_interval=0.2).lease_ttl == 2  # etcd's least
    from_env = load_settings(
        None,
        {"node_name": "n1", "state": "etcd"},
        environ={"CORRAL_ETCD_ENDPOINTS": "https://10.0.0.8:2379,https://10.0.0.9:2379"},
    )
    assert from_env.etcd_endpoints == ("https://10.0.0.8:2379", "https://10.0.0.9:2379")

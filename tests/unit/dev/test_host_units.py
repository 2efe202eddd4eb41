"""What `dev up` records of the host and `dev down` puts back, on a stand-in /proc/sys and
stand-in host paths (the real host's are checked by tests/cluster/test_dev_environment.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kakehashi.dev import host, node
from kakehashi.dev.layout import PORTS, Layout


@pytest.fixture
def proc_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proc-sys"
    for name, value, mode in (
        ("vm/overcommit_memory", "0\n", 0o644),
        ("kernel/panic", "1\n", 0o644),
        ("net/ipv4/ip_local_port_range", "32768\t60999\n", 0o644),
        ("net/bridge/bridge-nf-call-iptables", "1\n", 0o644),
        ("kernel/ns_last_pid", "4242\n", 0o666),  # volatile
        ("kernel/random/boot_id", "abc\n", 0o444),  # read-only
        ("vm/drop_caches", "", 0o200),  # write-only
        ("fs/binfmt_misc/status", "enabled\n", 0o644),  # another filesystem
    ):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        path.chmod(mode)
    monkeypatch.setattr(host, "PROC_SYS", root)
    return root


def _layout(tmp_path: Path, record: dict[str, object]) -> Layout:
    layout = Layout(root=tmp_path / "dev", ports=dict.fromkeys(PORTS, 1))
    layout.root.mkdir()
    (layout.root / "host.json").write_text(json.dumps(record))
    return layout


def _set(proc_sys: Path, name: str, value: str) -> None:
    proc_sys.joinpath(*name.split(".")).write_text(value + "\n")


def test_sysctls_read_are_the_writable_ones_without_the_kernels_own_counters(
        proc_sys: Path) -> None:
    assert host.read_sysctls() == {
        "vm.overcommit_memory": "0", "kernel.panic": "1",
        "net.ipv4.ip_local_port_range": "32768 60999",
        "net.bridge.bridge-nf-call-iptables": "1",
    }


def test_a_sysctl_changed_during_up_is_recorded_with_its_earlier_value(
        proc_sys: Path, tmp_path: Path) -> None:
    _set(proc_sys, "kernel.panic", "5")  # someone else's change, before `up`: not ours
    layout = _layout(tmp_path, {"sysctls": {"vm.overcommit_memory": "0"}, "modules": []})
    with host.changes_recorded(layout):
        _set(proc_sys, "net.bridge.bridge-nf-call-iptables", "0")
        _set(proc_sys, "vm.overcommit_memory", "1")
    record = json.loads((layout.root / "host.json").read_text())
    assert record["sysctls"] == {"vm.overcommit_memory": "0",
                                 "net.bridge.bridge-nf-call-iptables": "1"}

    # A second `up` (after a crash) finds the changed values: the earlier ones stay.
    with host.changes_recorded(layout):
        _set(proc_sys, "net.bridge.bridge-nf-call-iptables", "1")
    record = json.loads((layout.root / "host.json").read_text())
    assert record["sysctls"]["net.bridge.bridge-nf-call-iptables"] == "1"


def test_a_change_that_fails_the_block_is_still_recorded(proc_sys: Path,
                                                          tmp_path: Path) -> None:
    layout = _layout(tmp_path, {"sysctls": {}, "modules": []})
    with pytest.raises(RuntimeError), host.changes_recorded(layout):
        _set(proc_sys, "vm.overcommit_memory", "1")
        raise RuntimeError("kubelet never became Ready")
    record = json.loads((layout.root / "host.json").read_text())
    assert record["sysctls"] == {"vm.overcommit_memory": "0"}


def test_restore_writes_back_exactly_the_recorded_sysctls(proc_sys: Path) -> None:
    _set(proc_sys, "vm.overcommit_memory", "1")
    _set(proc_sys, "kernel.panic", "10")
    _set(proc_sys, "net.ipv4.ip_local_port_range", "1024 65535")  # not recorded: not ours
    said: list[str] = []
    host.restore_sysctls({"vm.overcommit_memory": "0", "kernel.panic": "10",
                          "net.ipv4.conf.kkh-learning.forwarding": "0"}, said.append)
    assert host.read_sysctls()["vm.overcommit_memory"] == "0"
    assert host.read_sysctls()["kernel.panic"] == "10"
    assert host.read_sysctls()["net.ipv4.ip_local_port_range"] == "1024 65535"
    assert said == ["Restoring sysctl vm.overcommit_memory = 0 (was 1)"]


def test_paths_created_since_the_first_up_are_removed_and_earlier_ones_kept(
        tmp_path: Path) -> None:
    kubelet, plugins = tmp_path / "var-lib-kubelet", tmp_path / "var-lib-kubelet" / "plugins"
    socket, logs = plugins / "kubelet.sock", tmp_path / "var-log-containers"
    cni, unknown = tmp_path / "var-lib-cni", tmp_path / "unknown"
    for directory in (plugins, logs, cni, unknown):
        directory.mkdir(parents=True)
    socket.write_text("")
    existed = {str(kubelet): True, str(plugins): False, str(socket): False,
               str(logs): True, str(cni): False}
    host.remove_created((kubelet, plugins, socket, logs, cni, unknown), existed)
    assert kubelet.exists() and logs.exists() and unknown.exists()
    assert not plugins.exists() and not cni.exists()


def test_what_a_host_path_held_tells_whether_it_existed() -> None:
    record = {"before": {"paths": {"/var/lib/cni": False, "/var/log/containers": [],
                                   "/run/containerd/s": ["x"], "/run/xtables.lock": True}}}
    assert host._paths_before(record) == {"/var/lib/cni": False, "/var/log/containers": True,
                                          "/run/containerd/s": True, "/run/xtables.lock": True}


def test_a_host_record_of_older_code_removes_only_what_it_knew(tmp_path: Path) -> None:
    older = {"cni_cache_existed": False, "run_root_existed": True}
    existed = host._paths_before(older)
    assert existed == {str(node.CNI_CACHE_DIR): False, str(node.RUN_ROOT): True}
    assert str(Path("/var/log/containers")) not in existed  # so: left alone


def test_container_log_links_of_a_node_are_removed_and_others_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = tmp_path / "var-log-containers"
    links.mkdir()
    monkeypatch.setattr(node, "CONTAINER_LOG_LINKS", links)
    ours, theirs = tmp_path / "dev" / "nodes" / "learning", tmp_path / "elsewhere"
    os.symlink(ours / "pod-logs" / "ns_pod_uid" / "main" / "0.log", links / "pod_ns_main-1.log")
    os.symlink(theirs / "0.log", links / "other_ns_main-2.log")
    node.remove_container_log_links(tmp_path / "dev")
    assert sorted(p.name for p in links.iterdir()) == ["other_ns_main-2.log"]


def test_every_host_path_the_nodes_touch_is_listed() -> None:
    listed = {str(p) for p in host.HOST_PATHS}
    for path in ("/var/lib/kubelet/device-plugins/kubelet.sock", "/var/log/containers",
                 "/var/lib/cni", "/var/lib/containers/cache", "/etc/cni/net.d",
                 "/run/kakehashi", "/run/containerd"):
        assert path in listed, path
    # Parents before children, so a fresh machine's whole tree goes.
    assert "/var/lib/kubelet" in listed and "/var/lib/containers" in listed

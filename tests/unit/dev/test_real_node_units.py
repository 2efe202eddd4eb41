"""The real nodes' and the images' pure parts: configuration, ignore rules, content keys."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from kakehashi.dev import images, node, tools
from kakehashi.dev.layout import PORTS, Layout

REPO = Path(__file__).resolve().parents[3]


def _node(tmp_path: Path, cluster: str = "learning") -> node.RealNode:
    layout = Layout(root=tmp_path, ports=dict.fromkeys(PORTS, 1234))
    binaries = {name: tmp_path / name for name in ("containerd", "kubelet", "kube-proxy")}
    return node.RealNode(cluster, layout, binaries, "10.213.255.1:5000")


def test_each_cluster_has_its_own_addresses_cidr_cgroup_and_socket(tmp_path: Path) -> None:
    learning, production = _node(tmp_path, "learning"), _node(tmp_path, "production")
    for attribute in ("name", "host_if", "host_ip", "node_ip", "pod_cidr", "cgroup_root",
                      "socket", "netns", "dir", "network_name"):
        assert getattr(learning, attribute) != getattr(production, attribute), attribute
    assert len(production.host_if) <= 15  # Linux interface names
    assert (learning.pod_cidr, production.pod_cidr) == ("10.244.0.0/24", "10.245.0.0/24")


def test_kubelet_config_has_the_settings_this_machine_needs(tmp_path: Path) -> None:
    config = _node(tmp_path)._kubelet_config()
    assert config["failCgroupV1"] is False  # 1.36 refuses cgroup v1 by default
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["makeIPTablesUtilChains"] is False
    assert config["imagePullCredentialsVerificationPolicy"] == "NeverVerify"
    assert config["registerWithTaints"] == [node.TAINT]
    assert config["address"] == "10.213.0.1"
    # Its own pod log directory: two kubelets sharing /var/log/pods delete each other's logs.
    assert config["podLogsDir"].startswith(str(tmp_path))


def test_containerd_config_keeps_each_node_to_its_own_paths(tmp_path: Path) -> None:
    real = _node(tmp_path)
    text = real._containerd_config()
    assert f'address = "{real.socket}"' in text
    assert "SystemdCgroup = false" in text and "restrict_oom_score_adj = true" in text
    assert 'sandbox = "10.213.255.1:5000/kakehashi/pause:1"' in text
    assert "io.containerd.nri.v1.nri" in text  # disabled: its socket path is fixed
    assert "/var/lib/containerd" not in text and "/etc/cni" not in text
    assert f'stream_server_address = "{real.node_ip}"' in text
    # Shim sockets and runc state default to /run/containerd, shared and left behind.
    settings = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "/run/containerd" not in settings
    assert f'socket_dir = "{real.run_dir}/s"' in text
    assert f'Root = "{real.run_dir}/runc"' in text
    assert len(f"{_node(tmp_path, 'production').run_dir}/s") <= 42  # containerd's limit


def test_kubelet_keeps_its_certificate_in_the_nodes_directory(tmp_path: Path) -> None:
    real = _node(tmp_path)
    assert f"--cert-dir={real.dir / 'pki'}" in real.kubelet().args  # not /var/lib/kubelet/pki


def test_node_kubeconfig_reaches_the_api_server_through_the_veth(tmp_path: Path) -> None:
    real = _node(tmp_path)
    kubeconfig = real.layout.kubeconfig("learning")
    kubeconfig.parent.mkdir(parents=True)
    kubeconfig.write_text(yaml.safe_dump({"clusters": [{"name": "c", "cluster": {
        "server": "https://127.0.0.1:32767", "certificate-authority-data": "eA=="}}]}))
    cluster = real._node_kubeconfig()["clusters"][0]["cluster"]
    assert cluster["server"] == "https://10.213.0.1:32767"
    assert "certificate-authority-data" not in cluster


def test_real_nodes_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAKEHASHI_REAL_NODES", "0")
    assert node.unavailable_reason() == "KAKEHASHI_REAL_NODES=0"


def test_a_machine_without_runc_and_iptables_says_so_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAKEHASHI_REAL_NODES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # none of the node's tools on it
    reason = node.unavailable_reason()
    if os.geteuid() != 0:
        assert reason is not None and reason.startswith("not root")
        return
    assert reason is not None and "\n" not in reason
    assert reason.startswith("missing runc, iptables, ip, nsenter, unshare, mount, umount")
    assert reason.endswith("(scripts/bootstrap.sh installs them)")


def test_kwok_only_machines_skip_the_real_nodes_tools() -> None:
    only = {tool.name for tool in tools.TOOLS if tool.real_nodes_only}
    assert only == {"containerd", "pause", "traefik"}
    k8s = next(tool for tool in tools.TOOLS if tool.name == "k8s")
    assert {"kubelet", "kube-proxy"} <= set(k8s.binaries)


def test_dockerignore_rules_as_docker_reads_them() -> None:
    rules = images._ignore_rules(REPO / "notebook-images/Dockerfile.dockerignore")
    assert images._ignored("tests/unit/test_x.py", rules)
    assert not images._ignored("operator/kakehashi/cli.py", rules)
    assert images._ignored("operator/kakehashi/__pycache__/cli.cpython-311.pyc", rules)
    assert not images._ignored("notebook-images/requirements.txt", rules)
    assert images._ignored("notebook-images/Dockerfile", rules)


def test_content_key_follows_the_context_and_the_build_args(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "notes.txt").write_text("not in the context\n")
    (tmp_path / "Dockerfile").write_text("FROM base\nCOPY app /app\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("*\n!app/\n")
    monkeypatch.setenv("KAKEHASHI_REPO", str(tmp_path))
    image = images.ProjectImage("x", "kakehashi/x", "Dockerfile")
    key = images.content_key(image, {"PYTHON_IMAGE": "a"})
    assert images.content_key(image, {"PYTHON_IMAGE": "a"}) == key
    (tmp_path / "notes.txt").write_text("changed, but ignored\n")
    assert images.content_key(image, {"PYTHON_IMAGE": "a"}) == key
    assert images.content_key(image, {"PYTHON_IMAGE": "b"}) != key
    (tmp_path / "app" / "main.py").write_text("print(2)\n")
    assert images.content_key(image, {"PYTHON_IMAGE": "a"}) != key
    # A binary copied from a named context: its tool's build (the directory names its content
    # key) is part of the image's.
    changed = images.content_key(image, {"PYTHON_IMAGE": "a"})
    kubectl = {"kubectl": tmp_path / "k8s-v1.36.3-aaaa"}
    assert images.content_key(image, {"PYTHON_IMAGE": "a"}, kubectl) != changed
    assert images.content_key(image, {"PYTHON_IMAGE": "a"}, {"kubectl": tmp_path / "k8s-v1.36.3-bbbb"}) != \
        images.content_key(image, {"PYTHON_IMAGE": "a"}, kubectl)


def test_the_bot_image_copies_the_kubectl_the_dev_environment_builds() -> None:
    bot = images.PROJECT_IMAGES["gitops-bot"]
    assert (bot.dockerfile, bot.target, bot.binaries) == ("operator/Dockerfile", "gitops-bot", ("kubectl",))
    dockerfile = (REPO / bot.dockerfile).read_text()
    assert "COPY --from=kubectl kubectl /usr/local/bin/kubectl" in dockerfile
    assert any("kubectl" in tool.binaries for tool in tools.TOOLS)


def test_every_dockerfile_takes_its_python_base_as_a_build_argument() -> None:
    dockerfiles = [p for p in REPO.rglob("Dockerfile*") if ".venv" not in p.parts
                   and not p.name.endswith(".dockerignore")]
    assert len(dockerfiles) >= 4
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        stages = set(re.findall(r"^FROM .* AS (\S+)", text, re.M | re.I))
        for source in re.findall(r"^FROM\s+(\S+)", text, re.M | re.I):
            # Either an ARG whose default is the public image, or an earlier stage.
            assert source.startswith("${") or source in stages, (dockerfile, source)
        for arg in re.findall(r"^FROM\s+\$\{(\w+)\}", text, re.M | re.I):
            assert re.search(rf"^ARG {arg}=\S+", text, re.M), (dockerfile, arg)


def test_project_images_name_real_dockerfiles() -> None:
    for image in images.PROJECT_IMAGES.values():
        text = (REPO / image.dockerfile).read_text()
        assert f"ARG {images.BASE_ARG}=" in text, image.dockerfile
        if image.target:
            assert re.search(rf"^FROM .* AS {image.target}$", text, re.M), image
    assert set(images.DEFAULT_IMAGES) <= set(images.PROJECT_IMAGES)


def test_pause_layer_is_reproducible() -> None:
    files = {"pause": (b"\x7fELF...", 0o755)}
    assert images.reproducible_layer(files) == images.reproducible_layer(files)

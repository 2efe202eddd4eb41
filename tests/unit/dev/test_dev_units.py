"""The dev environment's pure parts: caching, node rendering, exports, pid safety."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kakehashi.dev import clusters, tools
from kakehashi.dev.environment import ClusterEndpoint, DevEnvironment, S3Endpoint
from kakehashi.dev.processes import Service, pid_alive, terminate


def test_every_tool_module_is_pinned_with_a_committed_go_sum() -> None:
    # The on-demand tools too (benchmarks' crane, the alert tests' promtool).
    for tool in (*tools.TOOLS, tools.CRANE, tools.PROMTOOL):
        go_mod = (tool.module_dir / "go.mod").read_text()
        if "require" not in go_mod:  # a program of our own (pause): its source is here
            assert list(tool.module_dir.glob("*.go")), tool.name
            continue
        assert (tool.module_dir / "go.sum").stat().st_size > 0, tool.name
        for package in tool.binaries.values():
            assert package in go_mod, f"{package} is not a tool of {tool.name}/go.mod"


def test_cache_key_covers_the_source_of_our_own_programs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tools" / "p").mkdir(parents=True)
    (tmp_path / "tools" / "p" / "go.mod").write_text("module p\n")
    (tmp_path / "tools" / "p" / "main.go").write_text("package main\n")
    monkeypatch.setenv("KAKEHASHI_REPO", str(tmp_path))
    tool = tools.GoTool(name="p", version="1", binaries={"p": "p"})
    before = tool.cache_key()
    (tmp_path / "tools" / "p" / "main.go").write_text("package main\n// changed\n")
    assert tool.cache_key() != before


def test_kubernetes_staging_modules_are_replaced_with_matching_releases() -> None:
    go_mod = (tools.repo_root() / "tools" / "k8s" / "go.mod").read_text()
    assert re.search(r"^\s*(require )?k8s\.io/kubernetes v1\.36\.3\b", go_mod, re.M)
    for staging in ("k8s.io/api", "k8s.io/apiserver", "k8s.io/client-go", "k8s.io/kubectl"):
        assert f"{staging} => {staging} v0.36.3" in go_mod


def test_cache_key_changes_with_the_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tools" / "x").mkdir(parents=True)
    (tmp_path / "tools" / "x" / "go.mod").write_text("module x\nrequire a v1.0.0\n")
    (tmp_path / "tools" / "x" / "go.sum").write_text("a v1.0.0 h1:abc\n")
    monkeypatch.setenv("KAKEHASHI_REPO", str(tmp_path))
    monkeypatch.setenv("KAKEHASHI_CACHE_DIR", str(tmp_path / "cache"))
    tool = tools.GoTool(name="x", version="v1", binaries={"x": "example.com/x"})
    before = tool.install_dir()
    assert before == tool.install_dir()  # stable
    (tmp_path / "tools" / "x" / "go.mod").write_text("module x\nrequire a v1.0.1\n")
    assert tool.install_dir() != before
    assert tool.install_dir().parent == tmp_path / "cache" / "bin"


def test_build_is_skipped_when_binaries_are_cached(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tools" / "x").mkdir(parents=True)
    for name in ("go.mod", "go.sum"):
        (tmp_path / "tools" / "x" / name).write_text(name)
    monkeypatch.setenv("KAKEHASHI_REPO", str(tmp_path))
    monkeypatch.setenv("KAKEHASHI_CACHE_DIR", str(tmp_path / "cache"))
    tool = tools.GoTool(name="x", version="v1", binaries={"x": "example.com/x"})
    tool.install_dir().mkdir(parents=True)
    (tool.install_dir() / "x").write_text("#!/bin/true\n")
    messages: list[str] = []
    assert tools.build(tool, messages.append) == tool.install_dir()
    assert messages == []  # nothing compiled, nothing announced


def test_gpu_node_is_tainted_and_advertises_gpus() -> None:
    gpu = clusters.fake_node({"name": "g", "cpu": "8", "memory": "1Gi", "gpu": "4"})
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert gpu["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert gpu["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    cpu = clusters.fake_node({"name": "c", "cpu": "8", "memory": "1Gi"})
    assert cpu["spec"]["taints"] == []
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"]


def test_learning_nodes_hold_the_benchmark_load() -> None:
    pods = sum(110 for _ in clusters.NODES["learning"])
    assert pods >= 500


def _env(tmp_path: Path) -> DevEnvironment:
    return DevEnvironment(
        learning=ClusterEndpoint(name="learning", kubeconfig=tmp_path / "l.yaml",
                                 server="https://127.0.0.1:1"),
        production=ClusterEndpoint(name="production", kubeconfig=tmp_path / "p.yaml",
                                   server="https://127.0.0.1:2"),
        s3=S3Endpoint(endpoint="http://127.0.0.1:3", access_key="a", secret_key="b"),
        registry="127.0.0.1:4",
        bin_dir=tmp_path / "bin",
    )


def test_env_round_trips_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAKEHASHI_DEV_HOME", str(tmp_path / "home"))
    env = _env(tmp_path)
    env.save()
    assert DevEnvironment.load() == env
    exports = env.exports()
    assert exports["KUBECONFIG"] == str(tmp_path / "l.yaml")
    assert exports["KAKEHASHI_PRODUCTION_KUBECONFIG"] == str(tmp_path / "p.yaml")
    assert exports["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:3"
    assert exports["PATH"].startswith(str(tmp_path / "bin"))
    with pytest.raises(ValueError, match="unknown cluster"):
        env.cluster("staging")


def test_load_without_up_says_what_to_do(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAKEHASHI_DEV_HOME", str(tmp_path / "nothing"))
    with pytest.raises(RuntimeError, match="kakehashi dev up"):
        DevEnvironment.load()


def test_service_start_is_idempotent_and_stop_kills(tmp_path: Path) -> None:
    sleep = Path("/bin/sleep")
    service = Service(name="sleeper", binary=sleep, args=["300"], run_dir=tmp_path)
    pid = service.start()
    assert pid_alive(pid, sleep)
    assert service.start() == pid  # already running: no second process
    service.stop()
    assert not pid_alive(pid)
    assert service.pid() is None


def test_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    # A pid file pointing at a process that is not our binary is treated as stale.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        service = Service(name="ghost", binary=Path("/bin/sleep"), args=[], run_dir=tmp_path)
        service.pid_file.parent.mkdir(parents=True)
        service.pid_file.write_text(f"{other.pid}\n")
        assert service.pid() is None
        service.stop()
        time.sleep(0.1)
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait()


def test_terminate_escalates_to_sigkill() -> None:
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ok', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    assert stubborn.stdout is not None
    stubborn.stdout.readline()
    started = time.monotonic()
    terminate(stubborn.pid, grace_s=0.5)
    # It ignored SIGTERM for the whole grace period, then SIGKILL ended it.
    assert time.monotonic() - started >= 0.5
    assert not pid_alive(stubborn.pid)


def test_cli_help_everywhere() -> None:
    from click.testing import CliRunner

    from kakehashi.cli import main

    runner = CliRunner()
    for args in ([], ["dev"], ["dev", "up"], ["dev", "down"], ["dev", "status"],
                 ["dev", "env"], ["demo"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output


def test_env_command_prints_shell_exports(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from kakehashi.cli import main

    monkeypatch.setenv("KAKEHASHI_DEV_HOME", str(tmp_path / "home"))
    _env(tmp_path).save()
    result = CliRunner().invoke(main, ["dev", "env"])
    assert result.exit_code == 0
    lines = dict(line.removeprefix("export ").split("=", 1) for line in result.output.splitlines())
    assert lines["KAKEHASHI_REGISTRY"] == "127.0.0.1:4"
    assert os.pathsep in lines["PATH"]


def test_a_kubeconfig_for_pods_names_the_services_address_and_embeds_its_certificates(tmp_path: Path) -> None:
    """An operator in the cluster delivering to production reads this from a Secret: the
    host's loopback and the host's certificate paths mean nothing inside its pod."""
    import base64

    import yaml

    from kakehashi.dev.node import SERVICES_ADDRESS
    from kakehashi.dev.operator import kubeconfig_for_pods

    for name in ("ca.crt", "admin.crt", "admin.key"):
        (tmp_path / name).write_text(f"-----{name}-----\n")
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "p",
        "clusters": [{"name": "p", "cluster": {"server": "https://127.0.0.1:32758",
                                               "certificate-authority": str(tmp_path / "ca.crt")}}],
        "users": [{"name": "p", "user": {"client-certificate": str(tmp_path / "admin.crt"),
                                         "client-key": str(tmp_path / "admin.key")}}],
        "contexts": [{"name": "p", "context": {"cluster": "p", "user": "p"}}],
    }))
    endpoint = ClusterEndpoint(name="production", kubeconfig=kubeconfig, server="https://127.0.0.1:32758")
    env = DevEnvironment(learning=endpoint.model_copy(update={"name": "learning"}), production=endpoint,
                         s3=S3Endpoint(endpoint="http://s3", access_key="a", secret_key="b"),
                         registry="r:1", bin_dir=tmp_path)
    data = yaml.safe_load(kubeconfig_for_pods(env, "production"))
    cluster, user = data["clusters"][0]["cluster"], data["users"][0]["user"]
    assert cluster == {"server": f"https://{SERVICES_ADDRESS}:32758",
                       "certificate-authority-data": base64.b64encode(b"-----ca.crt-----\n").decode()}
    assert set(user) == {"client-certificate-data", "client-key-data"}
    assert base64.b64decode(user["client-key-data"]) == b"-----admin.key-----\n"

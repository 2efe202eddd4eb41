"""A real node in each local cluster: containerd, runc, CNI, kubelet and kube-proxy.

Each cluster's node lives in a network namespace of its own (a bind mount under
/run/kakehashi/<cluster>/netns), joined to the host by a veth pair: containerd, the CNI bridge
of its pods and kube-proxy's iptables rules are all inside it, so two clusters never share a
chain or a bridge, and deleting the namespace deletes them. The kubelet runs on the host (it
reaches the API server on loopback) and talks to its containerd through a unix socket.

    host                                         node namespace (per cluster)
    kubelet  --unix socket-->                    containerd (own mount namespace) -> runc
    kkh-<cluster> 10.213.<i>.1/30  <-- veth -->  eth0 10.213.<i>.2/30, default route to host
    route <pod CIDR> via 10.213.<i>.2            bridge kkh0 <pod gateway>, kube-proxy
    10.213.255.1/32 on lo: MinIO, registry       pods <pod CIDR>

Pods reach the host's services at `SERVICES_ADDRESS` by plain routing (no NAT), and the host
reaches pods (probes, tests) through its route to each pod CIDR. `teardown()` undoes what one
node made; what the nodes change on the host beyond that is recorded and restored by `host.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from kakehashi.dev.layout import Layout
from kakehashi.dev.processes import Service

Progress = Callable[[str], None]

SERVICES_ADDRESS = "10.213.255.1"
"""Where MinIO and the registry listen when there are real nodes: on the host's loopback
device, reached by the host itself and, routed through each node's veth, by every pod."""
NODE_LABEL = "kakehashi.dev/node"
TAINT = {"key": NODE_LABEL, "value": "real", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_LABEL, "operator": "Equal", "value": "real", "effect": "NoSchedule"}
SELECTOR = {NODE_LABEL: "real"}
RUN_ROOT = Path("/run/kakehashi")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_CACHE_DIR = Path("/var/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
"""Where every kubelet links each container's log (a fixed path; the logs are in our dirs)."""
# What the kubelet sets at start (setupKernelTunables); restored by `dev down`.
KUBELET_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic",
                   "kernel.panic_on_oops", "kernel.keys.root_maxkeys",
                   "kernel.keys.root_maxbytes")
INDEX = {"learning": 0, "production": 1}
KUBELET_PORT = 10250
KUBE_PROXY_HEALTH_PORT = 10256


def pause_image(registry: str) -> str:
    return f"{registry}/kakehashi/pause:1"


# --- can this machine run one? ------------------------------------------------------------

def unavailable_reason() -> str | None:
    """Why this machine cannot run real nodes, or None when it can."""
    if os.environ.get("KAKEHASHI_REAL_NODES", "").lower() in ("0", "false", "no"):
        return "KAKEHASHI_REAL_NODES=0"
    if os.geteuid() != 0:
        return "not root (containerd and the kubelet need root)"
    missing = [tool for tool in ("runc", "iptables", "ip", "nsenter", "unshare", "mount",
                                 "umount") if shutil.which(tool) is None]
    missing += [f"CNI plugin {p}" for p in ("bridge", "host-local", "loopback")
                if not (CNI_BIN_DIR / p).exists()]
    if missing:
        return f"missing {', '.join(missing)} (scripts/bootstrap.sh installs them)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "no overlay filesystem in this kernel"
    if not (_cgroup_v1_hierarchies() or _cgroup_v2_memory()):
        return "no usable cgroup v1 or v2 memory controller"
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no network/mount/pid namespaces ({probe.stderr.strip()[:200]})"
    return None


def _cgroup_v1_hierarchies() -> list[Path]:
    """Each v1 hierarchy's mount once (cpu and cpuacct are one, linked twice)."""
    root = Path("/sys/fs/cgroup")
    if not (root / "memory" / "memory.limit_in_bytes").exists():
        return []
    seen: dict[Path, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name == "unified" or not entry.is_dir():
            continue
        seen.setdefault(entry.resolve(), entry)
    return list(seen.values())


def _cgroup_v2_memory() -> bool:
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    return controllers.exists() and "memory" in controllers.read_text().split()


def _cgroup_dirs(relative: str, *, unified: bool = False) -> list[Path]:
    """The directories of cgroup `relative` in every v1 hierarchy (or the v2 one); with
    `unified`, also in the cgroup2 hierarchy of a hybrid setup, where the kubelet's cgroup
    library makes them too."""
    hierarchies = _cgroup_v1_hierarchies()
    if not hierarchies:
        hierarchies = [Path("/sys/fs/cgroup")]
    elif unified and Path("/sys/fs/cgroup/unified/cgroup.procs").exists():
        hierarchies.append(Path("/sys/fs/cgroup/unified"))
    return [h / relative.lstrip("/") for h in hierarchies]


# --- host state (recorded and restored by host.py) ------------------------------------------

def has_services_address() -> bool:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True).stdout
    return f" {SERVICES_ADDRESS}/32 " in out


def ensure_services_address() -> None:
    if not has_services_address():
        _run("ip", "addr", "add", f"{SERVICES_ADDRESS}/32", "dev", "lo")


def remove_container_log_links(under: Path) -> None:
    """Remove the kubelet's links in /var/log/containers that point below `under` (left
    dangling once a node's pod logs are deleted)."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        try:
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(under):
                link.unlink()
        except OSError:
            continue


def _run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result.stdout


# --- mounts ---------------------------------------------------------------------------------

def mount_points() -> list[Path]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split()[4]
        points.append(Path(field.encode().decode("unicode_escape")))
    return points


def unmount_under(*roots: Path) -> None:
    """Unmount everything at or below `roots`, deepest first."""
    for _ in range(5):
        inside = sorted({p for p in mount_points()
                         if any(p == r or r in p.parents for r in roots)},
                        key=lambda p: len(p.parts), reverse=True)
        if not inside:
            return
        for point in inside:
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)


# --- one node -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealNode:
    cluster: str
    layout: Layout
    binaries: dict[str, Path]
    registry: str

    @property
    def index(self) -> int:
        return INDEX[self.cluster]

    @property
    def name(self) -> str:
        return f"{self.cluster}-real"

    @property
    def host_if(self) -> str:
        return f"kkh-{self.cluster}"[:15]

    @property
    def host_ip(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def node_ip(self) -> str:
        return f"10.213.{self.index}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.{244 + self.index}.0.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.{244 + self.index}.0.1"

    @property
    def network_name(self) -> str:
        return f"kakehashi-{self.cluster}"

    @property
    def cgroup_root(self) -> str:
        return f"/kakehashi-{self.cluster}"

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.cluster

    @property
    def netns(self) -> Path:
        return self.run_dir / "netns"

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def dir(self) -> Path:
        return self.layout.root / "nodes" / self.cluster

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    def _in_netns(self) -> list[str]:
        return ["nsenter", f"--net={self.netns}"]

    # -- processes --

    def containerd(self) -> Service:
        return Service(
            name=f"containerd-{self.cluster}", binary=self.binaries["containerd"],
            args=["--config", str(self.dir / "containerd.toml")],
            run_dir=self.layout.root,
            # In the node's network namespace, and a mount namespace of its own (slave to
            # the host's): container root filesystems and pod network namespaces are mounted
            # there and vanish with its last process; the kubelet's volume mounts (under its
            # shared root) still propagate in.
            launcher=[*self._in_netns(), "unshare", "--mount", "--propagation", "slave", "--"],
            health_check=self._containerd_answers,
            env={"PATH": f"{self.binaries['containerd'].parent}{os.pathsep}"
                         f"{os.environ.get('PATH', '')}"},
        )

    def kubelet(self) -> Service:
        return Service(
            name=f"kubelet-{self.cluster}", binary=self.binaries["kubelet"],
            args=[f"--config={self.dir / 'kubelet.yaml'}",
                  f"--kubeconfig={self.layout.kubeconfig(self.cluster)}",
                  f"--root-dir={self.kubelet_root}",
                  # Its self-signed serving certificate; the default is /var/lib/kubelet/pki.
                  f"--cert-dir={self.dir / 'pki'}",
                  f"--hostname-override={self.name}",
                  f"--node-ip={self.host_ip}",
                  f"--node-labels={NODE_LABEL}=real"],
            run_dir=self.layout.root,
            health_url=f"http://127.0.0.1:{self.layout.ports[f'kubelet-{self.cluster}']}/healthz",
        )

    def kube_proxy(self) -> Service:
        return Service(
            name=f"kube-proxy-{self.cluster}", binary=self.binaries["kube-proxy"],
            args=[f"--config={self.dir / 'kube-proxy.yaml'}"],
            run_dir=self.layout.root,
            launcher=self._in_netns(),
            health_url=f"http://{self.node_ip}:{KUBE_PROXY_HEALTH_PORT}/healthz",
        )

    def services(self) -> list[Service]:
        return [self.containerd(), self.kubelet(), self.kube_proxy()]

    def _containerd_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(self.socket))
            except OSError:
                return False
            return True

    def running(self) -> bool:
        return all(service.healthy() for service in self.services())

    # -- bring up --

    def up(self, progress: Progress) -> bool:
        """Start the node unless it runs; True if it was (re)started. A node that is only
        partly there (a crash, a SIGKILL) is torn down and made afresh."""
        if self.running():
            return False
        if self.netns.exists() or any(s.pid() for s in self.services()):
            progress(f"Real node {self.name} is partly there: cleaning it up first")
            self.teardown(progress)
        progress(f"Starting real node {self.name} (containerd, kubelet, kube-proxy)")
        started = time.monotonic()
        self._network()
        self._cgroups()
        self._kubelet_root()
        self._write_configs()
        self.containerd().start()
        self.kubelet().start()
        self.kube_proxy().start()
        progress(f"Real node {self.name} processes up in {time.monotonic() - started:.1f}s")
        return True

    def _network(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if RUN_ROOT not in mount_points():
            # A namespace's bind mount needs a parent that does not propagate (systemd makes
            # / shared): a private mount of our own, as `ip netns` does for /run/netns.
            _run("mount", "--bind", str(RUN_ROOT), str(RUN_ROOT))
            _run("mount", "--make-private", str(RUN_ROOT))
        self.netns.touch()
        _run("unshare", f"--net={self.netns}", "true")
        peer = f"kkhn-{self.index}"
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", str(self.netns))
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        inside = self._in_netns()
        _run(*inside, "ip", "link", "set", peer, "name", "eth0")
        _run(*inside, "ip", "addr", "add", f"{self.node_ip}/30", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "route", "add", "default", "via", self.host_ip)
        # Per network namespace (bridge-nf-call-* since Linux 5.3): written inside the node's,
        # they change nothing on the host, whose values host.py records and compares anyway.
        for name in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
            path = Path("/proc/sys", *name.split("."))
            _run(*inside, "sh", "-c", f"test ! -e {path} || echo 1 > {path}")
        _run("ip", "route", "add", self.pod_cidr, "via", self.node_ip, "dev", self.host_if)

    def _cgroups(self) -> None:
        """The kubelet's cgroupRoot must exist in every hierarchy (with its cpuset filled in,
        which a new v1 cpuset cgroup is not)."""
        for directory in _cgroup_dirs(self.cgroup_root):
            directory.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (directory / name).exists() and not (directory / name).read_text().strip():
                    (directory / name).write_text((directory.parent / name).read_text())

    def _kubelet_root(self) -> None:
        """A shared bind mount, before containerd's mount namespace is made, so the volumes
        the kubelet mounts later propagate into it."""
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        if self.kubelet_root not in mount_points():
            _run("mount", "--bind", str(self.kubelet_root), str(self.kubelet_root))
            _run("mount", "--make-rshared", str(self.kubelet_root))

    def _write_configs(self) -> None:
        d = self.dir
        (d / "cni").mkdir(parents=True, exist_ok=True)
        (d / "cni" / "10-kakehashi.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": self.network_name,
            "plugins": [{
                "type": "bridge", "bridge": "kkh0", "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(d / "cni-ipam"),
                         "ranges": [[{"subnet": self.pod_cidr, "gateway": self.pod_gateway}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }, indent=2))
        registry_host = d / "certs.d" / self.registry
        registry_host.mkdir(parents=True, exist_ok=True)
        (registry_host / "hosts.toml").write_text(
            f'server = "http://{self.registry}"\n\n[host."http://{self.registry}"]\n'
            '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n')
        (d / "containerd.toml").write_text(self._containerd_config())
        (d / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        (d / "kube-proxy-kubeconfig.yaml").write_text(yaml.safe_dump(self._node_kubeconfig()))
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy-kubeconfig.yaml")},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": self.pod_cidr,
            "healthzBindAddress": f"{self.node_ip}:{KUBE_PROXY_HEALTH_PORT}",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zero leaves the host-wide conntrack settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }))

    def _containerd_config(self) -> str:
        d = self.dir
        return f"""version = 3
root = "{d / 'containerd'}"
state = "{self.run_dir / 'containerd-state'}"
imports = []
# Nothing of these is used, and NRI's socket path is fixed: two nodes would share it.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

# The shims' sockets and runc's state default to /run/containerd, on the host and shared by
# both nodes: under this node's run directory, they go with it.
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{self.run_dir / 's'}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_image(self.registry)}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{d / 'certs.d'}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc') or 'runc'}"
        Root = "{self.run_dir / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{d / 'cni'}"

[plugins."io.containerd.grpc.v1.cri"]
  # The kubelet (on the host) proxies exec and port-forward streams to this address.
  stream_server_address = "{self.node_ip}"
  stream_server_port = "0"
"""

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": self.host_ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.layout.ports[f"kubelet-{self.cluster}"],
            "podLogsDir": str(self.dir / "pod-logs"),
            # The API server is the only client, on this machine.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "registerWithTaints": [TAINT],
            "makeIPTablesUtilChains": False,
            "imagePullCredentialsVerificationPolicy": "NeverVerify",
            "serializeImagePulls": False,
            "failSwapOn": False,
            "resolvConf": "/etc/resolv.conf",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "nodeStatusReportFrequency": "10s",
            "runtimeRequestTimeout": "15m",
        }

    def _node_kubeconfig(self) -> dict[str, Any]:
        """The cluster's kubeconfig as seen from inside the node's namespace: the API server
        listens on every host address, reached there through the veth (its certificate names
        only loopback, hence no verification on this local link)."""
        data: dict[str, Any] = yaml.safe_load(self.layout.kubeconfig(self.cluster).read_text())
        for entry in data["clusters"]:
            cluster = entry["cluster"]
            port = urlparse(cluster["server"]).port
            cluster["server"] = f"https://{self.host_ip}:{port}"
            cluster.pop("certificate-authority", None)
            cluster.pop("certificate-authority-data", None)
            cluster["insecure-skip-tls-verify"] = True
        return data

    def wait_ready(self, api: Any, timeout: float = 120.0) -> float:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(api)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                node = core.read_node(self.name)
                if any(c.type == "Ready" and c.status == "True"
                       for c in node.status.conditions or []):
                    return time.monotonic() - started
            except ApiException as exc:
                if exc.status != 404:
                    raise
            time.sleep(0.5)
        raise RuntimeError(f"real node {self.name} not Ready after {timeout:.0f}s:\n"
                           f"{self.kubelet().log_tail()}")

    # -- tear down --

    def _netns_inode(self) -> int | None:
        try:
            if self.netns not in mount_points():
                return None
            return os.stat(self.netns).st_ino
        except OSError:
            return None

    def _own_pids(self) -> set[int]:
        """Every process of this node: those in its network namespace (containerd, shims,
        kube-proxy, host-network pods) and those in its cgroups (the containers)."""
        pids: set[int] = set()
        inode = self._netns_inode()
        if inode is not None:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        if os.stat(proc / "ns" / "net").st_ino == inode:
                            pids.add(int(proc.name))
                    except OSError:
                        continue
        for directory in _cgroup_dirs(self.cgroup_root, unified=True):
            for procs in _walk_cgroup(directory):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    continue
        pids.discard(os.getpid())
        return pids

    def teardown(self, progress: Progress) -> None:
        """Stop every process of the node and undo every change it made on the host."""
        for service in (self.kubelet(), self.kube_proxy()):
            service.stop()
        deadline = time.monotonic() + 30
        while (pids := self._own_pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if pids:
            progress(f"Processes of {self.name} still alive after SIGKILL: {sorted(pids)}")
        for service in self.services():
            service.pid_file.unlink(missing_ok=True)
        unmount_under(self.kubelet_root, self.dir, self.run_dir)
        remove_container_log_links(self.dir)
        if subprocess.run(["ip", "link", "show", self.host_if], capture_output=True).returncode == 0:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        for directory in _cgroup_dirs(self.cgroup_root, unified=True):
            _remove_cgroup(directory)
        if CNI_CACHE_DIR.exists():
            for cached in (CNI_CACHE_DIR / "results").glob(f"{self.network_name}-*"):
                cached.unlink(missing_ok=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def pod_processes(cluster: str, pod_uid: str) -> dict[int, str]:
    """The host PIDs (with their command lines) of a pod's containers on `cluster`'s real node,
    found through the kubelet's cgroups; the sandbox's pause process is left out. What a test
    SIGKILLs to crash a container as a dying process or node does: `kubectl delete` always
    sends SIGTERM first (the kubelet's minimum grace is 2 s), and a graceful stop is not a crash."""
    wanted = {f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}"}
    found: dict[int, str] = {}
    for root in _cgroup_dirs(f"/kakehashi-{cluster}", unified=True):
        if not root.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(root):
            if Path(dirpath).name not in wanted:
                continue
            for procs in _walk_cgroup(Path(dirpath)):
                for pid in procs.read_text().split():
                    try:
                        cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")
                    except OSError:
                        continue
                    command = cmdline.decode(errors="replace").strip()
                    if command and command != "/pause":
                        found[int(pid)] = command
    return found


def _walk_cgroup(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for dirpath, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            yield Path(dirpath) / "cgroup.procs"


def _remove_cgroup(directory: Path) -> None:
    if not directory.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(directory), key=lambda w: len(w[0]),
                                         reverse=True):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass

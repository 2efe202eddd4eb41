"""What the real nodes change on the host outside the environment's own directories: recorded
by `dev up` before it changes, restored by `dev down`.

`host.json` in the dev home holds:

- `before`: the host as the first `up` found it (every writable sysctl, the loaded kernel
  modules, network links, iptables rules, mount points, top-level cgroups, and what each of
  `HOST_PATHS` held), so that `down`'s test can compare the host after `down` with it;
- `sysctls`: every sysctl the environment changed, with its earlier value: those the kubelet
  sets at start (`node.KUBELET_SYSCTLS`, noted before any kubelet runs) and any other that
  changed while an `up` or `dev images` ran;
- `modules`: the kernel modules that were loaded while an `up` or `dev images` ran (none on a
  kernel with everything built in);
- `services_address_added`: whether `up` added `node.SERVICES_ADDRESS` to `lo`.

`down` restores exactly those sysctls, unloads exactly those modules, removes the address, and
deletes each of `HOST_PATHS` that did not exist before (and, of those that did, only the
environment's own entries).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kakehashi.dev import node
from kakehashi.dev.layout import Layout

Progress = Callable[[str], None]

PROC_SYS = Path("/proc/sys")
VOLATILE_SYSCTLS = frozenset((
    "kernel.ns_last_pid",  # the last pid handed out: moves with every fork
    "kernel.perf_event_max_sample_rate",  # lowered by the kernel when perf interrupts are slow
    "kernel.hung_task_warnings",  # counts down with each hung-task warning
    "kernel.tainted",  # bits the kernel sets on warnings and module loads
))
"""Writable sysctls the kernel itself changes: not the environment's doing, never restored."""

# Paths outside the environment's directories that a component creates with no setting to
# move it; each is deleted by `down` if it did not exist before the first `up`.
HOST_PATHS = (
    # The kubelet's device-plugin socket: a fixed path (k8s.io/kubelet deviceplugin/v1beta1).
    Path("/var/lib/kubelet"),
    Path("/var/lib/kubelet/device-plugins"),
    Path("/var/lib/kubelet/device-plugins/kubelet.sock"),
    # The kubelet's links to each container's log: a fixed path.
    node.CONTAINER_LOG_LINKS,
    # libcni's result cache (containerd's CNI library).
    node.CNI_CACHE_DIR,
    # buildah's blob-info cache (fixed for root) and its CNI lock, even with --network host.
    Path("/var/lib/containers"),
    Path("/var/lib/containers/cache"),
    Path("/etc/cni"),
    Path("/etc/cni/net.d"),
    # iptables-legacy's lock, taken by kube-proxy's iptables calls (iptables-nft has none).
    Path("/run/xtables.lock"),
    # The nodes' sockets, network namespaces, runc and shim state; buildah's runroot.
    node.RUN_ROOT,
    # containerd's shim sockets and runc's state by default, moved under RUN_ROOT by the
    # nodes' configuration: listed so that anything left there again shows.
    Path("/run/containerd"),
    Path("/run/containerd/s"),
    Path("/run/containerd/runc/k8s.io"),
)


# --- reading the host -----------------------------------------------------------------------

def read_sysctls() -> dict[str, str]:
    """Every sysctl root can read and write (name -> value, whitespace as single spaces),
    without the volatile ones."""
    root = PROC_SYS
    values: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root / "fs":
            # A filesystem of its own mounted there, not sysctls.
            dirnames[:] = [d for d in dirnames if d != "binfmt_misc"]
        for filename in filenames:
            path = Path(dirpath, filename)
            try:
                if path.stat().st_mode & 0o600 != 0o600:
                    continue
                value = path.read_text()
            except OSError:  # write-only in practice, or gone meanwhile (an interface's)
                continue
            name = ".".join(path.relative_to(root).parts)
            if name not in VOLATILE_SYSCTLS:
                values[name] = " ".join(value.split())
    return values


def loaded_modules() -> list[str]:
    try:
        return [line.split()[0] for line in Path("/proc/modules").read_text().splitlines()]
    except OSError:
        return []


def _iptables_rules() -> list[str]:
    """The host's iptables and ip6tables rules and chains, without counters and comments."""
    lines: list[str] = []
    for command in ("iptables-save", "ip6tables-save"):
        if shutil.which(command) is None:
            continue
        out = subprocess.run([command], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("#"):
                continue
            if line.startswith(":"):
                line = " ".join(line.split()[:2])  # ":CHAIN POLICY", no [packets:bytes]
            lines.append(f"{command}: {line}")
    return lines


def _cgroups() -> list[str]:
    """The top-level cgroups of every hierarchy."""
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return []
    if (root / "cgroup.procs").exists():  # cgroup v2 alone: the root is the hierarchy
        hierarchies = [root]
    else:  # v1 (or hybrid): one mount per hierarchy, cpu and cpuacct linked to theirs
        hierarchies = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted(str(child) for hierarchy in hierarchies for child in hierarchy.iterdir()
                  if child.is_dir())


def _entries(path: Path) -> list[str] | bool:
    """A directory's entries (so that something left inside one that was already there
    shows), or whether the file exists."""
    if path.is_dir() and not path.is_symlink():
        try:
            return sorted(os.listdir(path))
        except OSError:
            return True
    return path.exists() or path.is_symlink()


def snapshot() -> dict[str, Any]:
    """What the host looks like now, in the terms `down` promises to restore."""
    return {
        "sysctls": read_sysctls(),
        "modules": loaded_modules(),
        "links": sorted(os.listdir("/sys/class/net")),
        "iptables": _iptables_rules(),
        "mounts": sorted(set(str(p) for p in node.mount_points())),
        "cgroups": _cgroups(),
        "paths": {str(path): _entries(path) for path in HOST_PATHS},
    }


# --- recording ------------------------------------------------------------------------------

def _record_path(layout: Layout) -> Path:
    return layout.root / "host.json"


def _load(layout: Layout) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(_record_path(layout).read_text())
    record.setdefault("sysctls", {})
    record.setdefault("modules", [])
    return record


def _save(layout: Layout, record: dict[str, Any]) -> None:
    path = _record_path(layout)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)


def record(layout: Layout) -> None:
    """Note the host as it is, once: a later `up` (after a crash, say) must not take the
    values the environment set for the originals."""
    if _record_path(layout).exists():
        return
    before = snapshot()
    layout.root.mkdir(parents=True, exist_ok=True)
    _save(layout, {
        "before": before,
        # Set by the kubelet at its start, which may come after an `up` has returned.
        "sysctls": {name: before["sysctls"][name] for name in node.KUBELET_SYSCTLS
                    if name in before["sysctls"]},
        "modules": [],
        "services_address_added": not node.has_services_address(),
    })


@contextlib.contextmanager
def changes_recorded(layout: Layout) -> Iterator[None]:
    """Add to `host.json` every sysctl that changes and every kernel module that is loaded
    while the block runs (the kubelets, kube-proxies, containerd, the CNI plugins, buildah),
    with the sysctl's value before the block. Nothing is noted where `record(layout)` has not
    run (no real nodes)."""
    if not _record_path(layout).exists():
        yield
        return
    sysctls_before, modules_before = read_sysctls(), set(loaded_modules())
    try:
        yield
    finally:
        record_ = _load(layout)
        for name, value in read_sysctls().items():
            earlier = sysctls_before.get(name)
            if earlier is not None and value != earlier:
                record_["sysctls"].setdefault(name, earlier)
        for module in loaded_modules():
            if module not in modules_before and module not in record_["modules"]:
                record_["modules"].append(module)
        _save(layout, record_)


# --- restoring ------------------------------------------------------------------------------

def restore(layout: Layout, progress: Progress) -> None:
    """Undo what `host.json` lists, after every node is torn down; then forget it."""
    path = _record_path(layout)
    if not path.exists():
        return
    record_ = _load(layout)
    restore_sysctls(record_["sysctls"], progress)
    # Loaded last, unloaded first: a module may need one loaded before it.
    for module in reversed(record_["modules"]):
        result = subprocess.run(["modprobe", "-r", module], capture_output=True, text=True)
        if result.returncode != 0:
            progress(f"Kernel module {module}, loaded by dev up, stays loaded: "
                     f"{result.stderr.strip() or result.returncode}")
    if record_.get("services_address_added") and node.has_services_address():
        subprocess.run(["ip", "addr", "del", f"{node.SERVICES_ADDRESS}/32", "dev", "lo"],
                       capture_output=True)
    node.unmount_under(node.RUN_ROOT)
    node.remove_container_log_links(layout.root)
    remove_created(HOST_PATHS, _paths_before(record_))
    path.unlink()


def restore_sysctls(earlier: dict[str, str], progress: Progress) -> None:
    """Write back each sysctl's earlier value where it differs now."""
    for name, value in earlier.items():
        sysctl = PROC_SYS.joinpath(*name.split("."))
        try:
            current = " ".join(sysctl.read_text().split())
        except FileNotFoundError:  # an interface's, or a module's since unloaded
            continue
        if current != value:
            progress(f"Restoring sysctl {name} = {value} (was {current})")
            sysctl.write_text(value)


def remove_created(paths: tuple[Path, ...], existed: dict[str, bool]) -> None:
    """Delete each of `paths` that `existed` says was not there (unknown ones: left alone),
    deepest first."""
    for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
        if existed.get(str(path), True) or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _paths_before(record_: dict[str, Any]) -> dict[str, bool]:
    """Which of HOST_PATHS existed before the first `up`; a host.json written before the
    full snapshot knew only two of them (the others are taken as existing: left alone)."""
    before = record_.get("before")
    if before is not None:
        # A directory's entries (a list, maybe empty) or whether the file was there.
        return {path: entries is not False for path, entries in before["paths"].items()}
    return {str(node.CNI_CACHE_DIR): record_.get("cni_cache_existed", True),
            str(node.RUN_ROOT): record_.get("run_root_existed", True)}

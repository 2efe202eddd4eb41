"""Build the dev environment's servers from their pinned Go modules, and cache the binaries.

Each tool is a tiny Go main module under `tools/<name>/` whose `go.mod` pins the upstream
module and whose `go.sum` is committed. The cache key is a hash of that go.mod, go.sum, the Go
version and the build flags (and a tool's `patches/`), so bumping a pin rebuilds and nothing else
does; a second `kakehashi dev up` finds every binary and starts in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from kakehashi.dev.environment import cache_dir


def repo_root() -> Path:
    """The checkout holding `tools/` and `manifests/` (dev commands run from a clone)."""
    env = os.environ.get("KAKEHASHI_REPO")
    if env:
        return Path(env)
    # operator/kakehashi/dev/tools.py -> the repository root
    return Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class ModulePatch:
    """Files of one dependency swapped for ours (under `tools/<name>/patches/`) in the build.

    The build copies the module from the module cache, swaps the files, and points a generated
    go.mod (`-modfile`) at the copy with a `replace`: the committed go.mod, go.sum and every pin
    stay as they are. For leaving out code the dev environment never runs when no build tag
    can (Go refuses an `-overlay` of files in the module cache)."""

    module: str
    files: dict[str, str]
    """Path inside the module -> file name under tools/<name>/patches/."""


@dataclass(frozen=True)
class GoTool:
    """One pinned Go module and the commands built from it."""

    name: str
    """Directory under tools/ holding the main module."""
    version: str
    """Upstream version, for humans; the pin itself is in go.mod."""
    binaries: dict[str, str]
    """Output file name -> Go package path."""
    tags: str = ""
    real_nodes_only: bool = False
    """Built only on machines that run the real nodes."""
    ldflags: tuple[str, ...] = ("-s", "-w")
    extra_ldflags: tuple[str, ...] = field(default=())
    patches: tuple[ModulePatch, ...] = ()

    @property
    def module_dir(self) -> Path:
        return repo_root() / "tools" / self.name

    @property
    def patch_dir(self) -> Path:
        return self.module_dir / "patches"

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        # go.mod and go.sum pin the upstream modules; a module of our own (the pause program)
        # has its source here too, and no go.sum when it needs nothing else.
        sources = ["go.mod", "go.sum", *sorted(p.name for p in self.module_dir.glob("*.go"))]
        for part in sources:
            path = self.module_dir / part
            digest.update(part.encode())
            digest.update(path.read_bytes() if path.exists() else b"")
        digest.update(go_version().encode())
        digest.update(json.dumps([self.binaries, self.tags, self.ldflags,
                                  self.extra_ldflags]).encode())
        # Only a patched tool hashes more: every other tool keeps its key (and its cached build).
        for patch in self.patches:
            for inside, name in sorted(patch.files.items()):
                digest.update(json.dumps([patch.module, inside, name]).encode())
                digest.update((self.patch_dir / name).read_bytes())
        return digest.hexdigest()[:12]

    def install_dir(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}-{self.cache_key()}"


K8S_VERSION = "v1.36.3"
TRAEFIK_VERSION = "v3.6.12"
TRAEFIK = GoTool(name="traefik", version=TRAEFIK_VERSION, binaries={
    "traefik": "github.com/traefik/traefik/v3/cmd/traefik",
}, real_nodes_only=True,
    # Stamped so `traefik version` is honest (the dev environment also turns off its
    # new-version check: no network here).
    extra_ldflags=(f"-X github.com/traefik/traefik/v3/pkg/version.Version={TRAEFIK_VERSION}",),
    # lego's DNS-provider registry imports all of its DNS providers and their cloud SDKs (846
    # of Traefik's 2,495 packages) for ACME DNS-01 challenges, which the dev environment never
    # solves (it has no certificate resolver) and no build tag leaves out. Ours imports none
    # and says so if asked for one.
    patches=(ModulePatch("github.com/go-acme/lego/v4", {
        "providers/dns/zz_gen_dns_providers.go": "lego_dns_providers.go.txt"}),))
ETCD_VERSION = "3.5.35"
CONTAINERD_VERSION = "v2.4.2"

TOOLS: tuple[GoTool, ...] = (
    GoTool(
        name="k8s",
        version=K8S_VERSION,
        binaries={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            # The real nodes: ~100 packages beyond what the control plane already compiles.
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
        # Upstream's release flags; the version stamps make /version and kubectl honest.
        tags="selinux,notest",
        extra_ldflags=tuple(
            f"-X {pkg}.{key}={value}"
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
            for key, value in (("gitVersion", K8S_VERSION), ("gitMajor", "1"),
                               ("gitMinor", K8S_VERSION.split(".")[1]))
        ),
    ),
    GoTool(name="etcd", version=ETCD_VERSION, binaries={"etcd": "go.etcd.io/etcd/server/v3"}),
    GoTool(name="kwok", version="v0.8.0", binaries={
        "kwok": "sigs.k8s.io/kwok/cmd/kwok",
        "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl",
    }),
    GoTool(name="minio", version="2026-02-12", binaries={"minio": "github.com/minio/minio"}),
    GoTool(name="registry", version="v3.1.2", binaries={
        "registry": "github.com/distribution/distribution/v3/cmd/registry",
    }),
    GoTool(name="training-operator", version="v1.9.0", binaries={
        "training-operator": "github.com/kubeflow/training-operator/cmd/training-operator.v1",
    }),
    # The real nodes' container runtime; runc and the CNI plugins come from Debian packages.
    GoTool(name="containerd", version=CONTAINERD_VERSION, binaries={
        "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
        "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
    }, tags="no_btrfs,no_devmapper,no_zfs", real_nodes_only=True),
    # Every pod's sandbox process (registry.k8s.io is out of reach): tools/pause/main.go.
    GoTool(name="pause", version="1", binaries={"pause": "kakehashi.dev/tools/pause"},
           real_nodes_only=True),
    # The production cluster's Gateway API implementation (a canary's HTTPRoute weights). Only
    # real pods have addresses it can forward to, so kwok-only machines skip it. v3.6: v3.7's
    # go.mod requires a nested module (dynamic/ext) that exists only as a local replace.
    TRAEFIK,
)

# Built on demand only (benchmarks/baking.py compares Kakehashi's layer append with it), never
# by `dev up`: deliberately outside TOOLS.
CRANE = GoTool(name="crane", version="v0.22.1", binaries={
    "crane": "github.com/google/go-containerregistry/cmd/crane",
})

# Built on demand only (tests/unit/test_alert_rules.py runs `promtool test rules` on the
# PrometheusRule's alerts), never by `dev up`. `remove_all_sd` is upstream's build tag that leaves
# out the cloud service-discovery plugins (AWS, Azure, GCE ... SDKs: ~250 of its 1,360 packages);
# rule tests and rule checks never discover targets.
PROMTOOL_VERSION = "v0.316.0"
PROMTOOL = GoTool(name="promtool", version=PROMTOOL_VERSION, binaries={
    "promtool": "github.com/prometheus/prometheus/cmd/promtool",
}, tags="remove_all_sd",
    # Prometheus 3.16.0 is Go module v0.316.0; stamped so `promtool --version` is honest.
    extra_ldflags=("-X github.com/prometheus/common/version.Version=3.16.0",))

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@cache
def go_version() -> str:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("Go is not installed: the dev environment builds its servers with it")
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _go_env() -> dict[str, str]:
    # Static binaries, as upstream releases them; no C toolchain needed.
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}


def build(tool: GoTool, progress: Progress = _quiet) -> Path:
    """Build `tool` unless its binaries are cached; return the directory holding them."""
    target = tool.install_dir()
    if all((target / name).is_file() for name in tool.binaries):
        return target
    started = time.monotonic()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = _go_env()
    packages = list(tool.binaries.values())
    sources = target.with_name(target.name + ".src")
    try:
        flags = _patched_modfile(tool, sources)
        if tool.tags:
            flags += ["-tags", tool.tags]
        total = _count_packages(tool, packages, flags, env)
        progress(f"Building {', '.join(tool.binaries)} ({tool.name} {tool.version}): "
                 f"{total} packages, first build only")
        ldflags = " ".join((*tool.ldflags, *tool.extra_ldflags))
        done = 0
        for name, package in tool.binaries.items():
            cmd = ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, *flags, "-o",
                   str(staging / name)]
            # Binaries of one tool share most packages, compiled once: the count runs across them.
            done = _run_with_progress([*cmd, package], tool, total, env, progress, done)
    finally:
        shutil.rmtree(sources, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    progress(f"Built {tool.name} in {time.monotonic() - started:.0f}s -> {target}")
    return target


def _patched_modfile(tool: GoTool, sources: Path) -> list[str]:
    """Copy each patched module into `sources` with our files swapped in; return the go flags
    building against the copies (none for an unpatched tool)."""
    if not tool.patches:
        return []
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    replaces = []
    for index, patch in enumerate(tool.patches):
        copy = sources / str(index)
        # The module cache's files and directories are read-only: copy contents, not modes.
        shutil.copytree(module_dir(patch.module, None, tool.name), copy,
                        copy_function=shutil.copyfile)
        for directory, _, _ in os.walk(copy):
            os.chmod(directory, 0o755)
        for inside, name in patch.files.items():
            if not (copy / inside).is_file():
                # Upstream moved it: ours would be added beside the new file, not swapped in.
                raise RuntimeError(f"tools/{tool.name}/patches/{name} replaces {inside}, which "
                                   f"{patch.module} no longer has: update the patch")
            shutil.copyfile(tool.patch_dir / name, copy / inside)
        replaces.append(f"replace {patch.module} => {copy}\n")
    go_mod = (tool.module_dir / "go.mod").read_text()
    (sources / "go.mod").write_text(go_mod + "\n" + "".join(replaces))
    # -modfile reads (and -mod=mod may extend) the go.sum beside it.
    shutil.copyfile(tool.module_dir / "go.sum", sources / "go.sum")
    return ["-modfile", str(sources / "go.mod")]


def _count_packages(tool: GoTool, packages: list[str], flags: list[str],
                    env: dict[str, str]) -> int:
    # With the build's flags: tags and patches decide which packages are compiled (promtool's
    # remove_all_sd, traefik's lego).
    listed = subprocess.run(["go", "list", *flags, "-deps", *packages], cwd=tool.module_dir,
                            env=env, capture_output=True, text=True)
    if listed.returncode != 0:
        raise RuntimeError(f"go list failed for {tool.name}:\n{listed.stderr[-2000:]}")
    return len(listed.stdout.split())


def _run_with_progress(cmd: list[str], tool: GoTool, total: int, env: dict[str, str],
                       progress: Progress, done: int = 0) -> int:
    # `go build -v` names each package as it compiles it: a cheap, honest progress counter.
    proc = subprocess.Popen(cmd, cwd=tool.module_dir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    last = 0.0
    tail: list[str] = []
    for line in proc.stderr:
        done += 1
        tail = [*tail[-40:], line.rstrip()]
        now = time.monotonic()
        if now - last > 15:
            progress(f"  {tool.name}: compiled {min(done, total)}/{total} packages")
            last = now
    if proc.wait() != 0:
        detail = "\n".join(tail)
        raise RuntimeError(f"go build failed for {tool.name} ({' '.join(cmd[-1:])}):\n{detail}")
    return done


def ensure_all(progress: Progress = _quiet, real_nodes: bool = True) -> dict[str, Path]:
    """Build whatever is missing; return binary name -> path for every tool (without the
    real nodes' own tools when `real_nodes` is false)."""
    paths: dict[str, Path] = {}
    for tool in TOOLS:
        if tool.real_nodes_only and not real_nodes:
            continue
        directory = build(tool, progress)
        for name in tool.binaries:
            paths[name] = directory / name
    return paths


def module_dir(module: str, version: str | None, tool: str) -> Path:
    """Where the Go module cache holds `module@version` (for files shipped in it, e.g. CRDs);
    without a version, the one `tool`'s go.mod selects."""
    query = f"{module}@{version}" if version else module
    result = subprocess.run(["go", "mod", "download", "-json", query],
                            cwd=repo_root() / "tools" / tool, env=_go_env(),
                            capture_output=True, text=True, check=True)
    return Path(json.loads(result.stdout)["Dir"])


def main() -> None:  # pragma: no cover - convenience for `python -m kakehashi.dev.tools`
    for name, path in ensure_all(lambda msg: print(msg, file=sys.stderr, flush=True)).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":  # pragma: no cover
    main()

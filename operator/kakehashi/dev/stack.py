"""Bring the whole local environment up, report on it, and take it down.

Two Kubernetes clusters (`learning`, `production`, see `clusters.py`), each with kwok's fake
nodes and, where the machine allows it, a real node (`node.py`); MinIO and an OCI registry
(`storage.py`); the Kubeflow training-operator on the learning cluster
(`training_operator.py`) and, on its real node, the stand-in for the team's shared EFS volume
(`shared_volume.py`). Every step checks what is already there first, so `up` is
idempotent and cheap when warm.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from kakehashi.control.client import api_client
from kakehashi.dev import (
    clusters,
    gateway,
    host,
    images,
    node,
    shared_volume,
    storage,
    tools,
    training_operator,
)
from kakehashi.dev.clusters import cluster_pids, restart_component, wait_crd_established
from kakehashi.dev.environment import (
    CLUSTERS,
    ClusterEndpoint,
    DevEnvironment,
    S3Endpoint,
    state_dir,
)
from kakehashi.dev.layout import Layout
from kakehashi.dev.processes import Service, terminate

__all__ = ["ComponentStatus", "down", "restart_component", "started_pids", "status", "up",
           "wait_crd_established"]

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def _link_binaries(layout: Layout, binaries: dict[str, Path]) -> None:
    """One directory with every tool, for PATH (`kakehashi dev env`)."""
    layout.bin_dir.mkdir(parents=True, exist_ok=True)
    for name, path in binaries.items():
        link = layout.bin_dir / name
        if link.is_symlink() or link.exists():
            if link.resolve() == path.resolve():
                continue
            link.unlink()
        link.symlink_to(path)


def _server(kubeconfig: Path) -> str:
    data = yaml.safe_load(kubeconfig.read_text())
    server: str = data["clusters"][0]["cluster"]["server"]
    return server


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """One `up`/`down` at a time per environment: parallel test sessions share it."""
    path = state_dir().parent / f".{state_dir().name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_images(names: list[str], progress: Progress = _silent) -> dict[str, str]:
    """`kakehashi dev images`: build and push project images to the running environment."""
    with _exclusive():
        env = DevEnvironment.load()
        if not env.real_nodes:
            raise RuntimeError("no real nodes here, so no local images: "
                               f"{env.no_real_nodes_reason}")
        # buildah, too, writes on the host (a module it loads, say): recorded for `down`.
        with host.changes_recorded(Layout.load(create=False)):
            built = images.build_images(env.registry, names, progress)
        env.images.update(built)
        env.save()
        return built


def up(progress: Progress = _silent) -> DevEnvironment:
    """Build what is missing, start what is not running, and return the environment."""
    with _exclusive():
        return _up(progress)


def _previous_images() -> dict[str, str]:
    try:
        return DevEnvironment.load().images
    except (RuntimeError, ValueError):
        return {}


def _images_to_build() -> list[str]:
    """The project images `up` builds: KAKEHASHI_DEV_IMAGES (a comma list, or `none`), by
    default those the tests and the demo run."""
    wanted = os.environ.get("KAKEHASHI_DEV_IMAGES")
    if wanted is None:
        return list(images.DEFAULT_IMAGES)
    names = [name.strip() for name in wanted.split(",") if name.strip() not in ("", "none")]
    unknown = set(names) - set(images.PROJECT_IMAGES)
    if unknown:
        raise RuntimeError(f"KAKEHASHI_DEV_IMAGES: unknown images {sorted(unknown)}; "
                           f"known: {sorted(images.PROJECT_IMAGES)}")
    return names


def _services_host(real: bool) -> str:
    return node.SERVICES_ADDRESS if real else "127.0.0.1"


def _up(progress: Progress) -> DevEnvironment:
    layout = Layout.load()
    reason = node.unavailable_reason()
    real = reason is None
    if not real:
        progress(f"No real nodes on this machine ({reason}): kwok nodes only")
    binaries = tools.ensure_all(progress, real_nodes=real)
    _link_binaries(layout, binaries)
    if not real:
        return _start(layout, binaries, reason or "", progress)
    host.record(layout)
    with host.changes_recorded(layout):
        node.ensure_services_address()
        return _start(layout, binaries, "", progress)


def _start(layout: Layout, binaries: dict[str, Path], no_real_nodes_reason: str,
           progress: Progress) -> DevEnvironment:
    """Start whatever is not running yet; with real nodes when there is no reason against."""
    real = not no_real_nodes_reason
    services_host = _services_host(real)
    restarted = set()
    for cluster in CLUSTERS:
        started_at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        if clusters.cluster_up(layout, binaries, cluster, progress):
            restarted.add(cluster)
        clusters.ensure_fake_nodes(layout, cluster,
                                   started_at if cluster in restarted else None)
    progress("Starting MinIO and the registry")
    storage.minio_service(layout, binaries, services_host).start()
    storage.write_registry_config(layout, services_host)
    storage.registry_service(layout, binaries, services_host).start()
    registry = f"{services_host}:{layout.ports['registry']}"
    env = DevEnvironment(
        learning=ClusterEndpoint(name="learning", kubeconfig=layout.kubeconfig("learning"),
                                 server=_server(layout.kubeconfig("learning"))),
        production=ClusterEndpoint(name="production",
                                   kubeconfig=layout.kubeconfig("production"),
                                   server=_server(layout.kubeconfig("production"))),
        s3=S3Endpoint(endpoint=f"http://{services_host}:{layout.ports['minio']}",
                      access_key=storage.S3_ACCESS_KEY, secret_key=storage.S3_SECRET_KEY),
        registry=registry,
        bin_dir=layout.bin_dir,
        real_nodes=real,
        no_real_nodes_reason=no_real_nodes_reason,
    )
    storage.ensure_bucket(env)
    if real:
        images.push_pause_image(registry, binaries["pause"], node.pause_image(registry))
        # Images built earlier (`kakehashi dev images operator`, say) stay listed while the
        # registry still has them.
        env.images = {name: ref for name, ref in _previous_images().items()
                      if images.in_registry(registry, ref)}
        env.images["base"] = images.ensure_base_image(registry, progress)
        env.images.update(images.build_images(registry, _images_to_build(), progress))
        for cluster in CLUSTERS:
            real_node = node.RealNode(cluster, layout, binaries, registry)
            if cluster in restarted:
                # A new or restarted control plane: start its node afresh too (a kubelet
                # of a recreated cluster holds credentials of the old one).
                real_node.teardown(progress)
            if real_node.up(progress) or cluster in restarted:
                took = real_node.wait_ready(api_client(layout.kubeconfig(cluster)))
                progress(f"Real node {real_node.name} Ready ({took:.1f}s after its start)")
        # The Gateway API and Traefik on production: canary routes, served on loopback.
        env.gateway = gateway.up(layout, binaries, restart="production" in restarted)
        # The learning overlay's shared claim (EFS on EKS) binds to a directory on the real
        # node here: only a real kubelet mounts it, so kwok-only machines have none.
        shared_volume.install(layout)
    operator = training_operator.service(layout, binaries)
    if "learning" in restarted:
        # A new cluster has a new CA and a restarted one may have lost its watches: the
        # controller's health endpoint would not tell, so start it afresh.
        operator.stop()
    if not operator.healthy():
        progress("Starting the Kubeflow training-operator on the learning cluster")
        training_operator.install_prerequisites(layout)
        operator.start(wait=False)
        training_operator.mount_webhook_certs(layout)
        operator.wait_healthy()
    env.save()
    return env


@dataclass
class ComponentStatus:
    cluster: str
    component: str
    pid: int | None
    endpoint: str

    @property
    def running(self) -> bool:
        return self.pid is not None


def _real(layout: Layout) -> bool:
    """Whether `up` made real nodes here (it records the host first, `down` restores it)."""
    return (layout.root / "host.json").exists()


def status() -> list[ComponentStatus]:
    layout = Layout.load(create=False)
    if not layout.exists:
        return []  # never brought up here
    binaries = _cached_binaries()
    rows: list[ComponentStatus] = []
    for cluster in CLUSTERS:
        kubeconfig = layout.kubeconfig(cluster)
        server = _server(kubeconfig) if kubeconfig.exists() else "-"
        for component, pid in cluster_pids(layout, cluster).items():
            rows.append(ComponentStatus(cluster, component, pid,
                                        server if component == "kube-apiserver" else ""))
        for service in _node_services(layout, binaries, cluster):
            rows.append(ComponentStatus(cluster, service.name, service.pid(),
                                        service.health_url or ""))
    for service in _services(layout, binaries):
        cluster = {"training-operator": "learning", "traefik": "production"}.get(service.name, "shared")
        rows.append(ComponentStatus(cluster, service.name, service.pid(), service.health_url or ""))
    return rows


def _nodes(layout: Layout, binaries: dict[str, Path]) -> list[node.RealNode]:
    if not _real(layout) or not all(name in binaries for name in
                                    ("containerd", "kubelet", "kube-proxy")):
        return []
    registry = f"{_services_host(True)}:{layout.ports['registry']}"
    return [node.RealNode(cluster, layout, binaries, registry)
            for cluster in CLUSTERS]


def _node_services(layout: Layout, binaries: dict[str, Path], cluster: str) -> list[Service]:
    return [s for n in _nodes(layout, binaries) if n.cluster == cluster for s in n.services()]


def _services(layout: Layout, binaries: dict[str, Path]) -> list[Service]:
    """The shared processes started directly (not by kwokctl), in start order."""
    if not all(name in binaries for name in ("minio", "registry", "training-operator")):
        return []  # never built, so never started
    services_host = _services_host(_real(layout))
    services = [storage.minio_service(layout, binaries, services_host),
                storage.registry_service(layout, binaries, services_host),
                training_operator.service(layout, binaries)]
    if _real(layout) and "traefik" in binaries:
        services.append(gateway.service(layout, binaries))
    return services


def shared_service(name: str) -> Service:
    """One of the shared processes (`minio`, `registry`, `training-operator`) of the running
    environment, to stop and start on its own: an outage on purpose, in tests."""
    layout = Layout.load(create=False)
    for service in _services(layout, _cached_binaries()):
        if service.name == name:
            return service
    raise KeyError(f"no shared service {name!r} in the environment at {layout.root}")


def _cached_binaries() -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for tool in tools.TOOLS:
        directory = tool.install_dir()
        for name in tool.binaries:
            if (directory / name).is_file():
                paths[name] = directory / name
    return paths


def started_pids() -> list[int]:
    """Every pid the environment started that is still alive (for `down` and its test)."""
    return [row.pid for row in status() if row.pid is not None]


def down(progress: Progress = _silent) -> None:
    """Stop every process `up` started, by pid, undo its host changes, delete its data."""
    with _exclusive():
        _down(progress)


def _down(progress: Progress) -> None:
    layout = Layout.load(create=False)
    binaries = _cached_binaries()
    for real_node in _nodes(layout, binaries):
        progress(f"Tearing down real node {real_node.name}")
        real_node.teardown(progress)
    for service in reversed(_services(layout, binaries)):
        if service.pid_file.exists():
            progress(f"Stopping {service.name}")
            service.stop()
    for cluster in CLUSTERS:
        if not (layout.kwok_workdir / "clusters" / cluster).exists():
            continue
        progress(f"Deleting cluster {cluster}")
        if "kwokctl" in binaries:
            try:
                clusters.delete_cluster(layout, binaries, cluster)
            except RuntimeError as exc:
                progress(f"kwokctl delete failed ({exc}); stopped by pid")
        for pid in cluster_pids(layout, cluster).values():
            if pid is not None:
                terminate(pid)
    images.release_build_mounts()
    host.restore(layout, progress)
    shutil.rmtree(layout.root, ignore_errors=True)
    # The training-operator's certificate rotator writes its serving certs to a fixed path.
    shutil.rmtree(training_operator.WEBHOOK_CERT_DIR, ignore_errors=True)
    progress("Dev environment removed")

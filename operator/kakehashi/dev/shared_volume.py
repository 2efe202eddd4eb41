"""The team's shared volume in the dev environment: a local PersistentVolume on the learning
cluster's real node standing in for EFS.

The learning overlay claims the volume (PVC team-shared, ReadWriteMany, StorageClass efs-sc,
manifests/overlays/learning/shared-volume.yaml); on EKS the EFS CSI driver provisions it. The
local clusters have no EFS and no CSI driver, so `dev up` offers a PersistentVolume of the same
class, access mode and size: the PV controller binds a claim to an existing matching volume
before asking any provisioner, so the install's claim binds to it unchanged. Its directory is
on this machine under the environment's root (gone with `dev down`, never in the install), and
its node affinity puts every pod that mounts it on the real node, the one node whose kubelet
can mount a directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field

from kakehashi.dev import tools
from kakehashi.dev.clusters import FIELD_MANAGER
from kakehashi.dev.layout import Layout

CLUSTER: Final = "learning"
NODE: Final = f"{CLUSTER}-real"
OVERLAY_FILE: Final = Path("manifests") / "overlays" / "learning" / "shared-volume.yaml"
# The notebook images' user (notebook-images/Dockerfile: jovyan, uid 1000, group users 100),
# as the EFS access point's POSIX identity is on EKS.
OWNER_UID: Final = 1000
OWNER_GID: Final = 100


class SharedClaim(BaseModel):
    """What of the install's claim the stand-in has to match for the PV controller to bind."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    storage_class: str = Field(min_length=1)
    access_modes: tuple[str, ...] = Field(min_length=1)
    storage: str

    @classmethod
    def from_manifest(cls, claim: dict[str, Any]) -> SharedClaim:
        spec = claim["spec"]
        return cls(name=claim["metadata"]["name"], namespace=claim["metadata"]["namespace"],
                   storage_class=spec.get("storageClassName") or "",
                   access_modes=tuple(spec.get("accessModes") or ()),
                   storage=spec["resources"]["requests"]["storage"])


def install_claim() -> SharedClaim:
    """The learning overlay's shared claim (the one PersistentVolumeClaim of its file)."""
    docs = [d for d in yaml.safe_load_all((tools.repo_root() / OVERLAY_FILE).read_text()) if d]
    claims = [d for d in docs if d.get("kind") == "PersistentVolumeClaim"]
    if len(claims) != 1:
        raise RuntimeError(f"{OVERLAY_FILE}: expected one PersistentVolumeClaim, found {len(claims)}")
    return SharedClaim.from_manifest(claims[0])


def volume_name(claim: SharedClaim) -> str:
    return f"kakehashi-dev-{claim.name}"


def directory(layout: Layout, claim: SharedClaim) -> Path:
    return layout.root / "shared-volumes" / claim.name


def persistent_volume(claim: SharedClaim, path: Path) -> dict[str, Any]:
    """The stand-in PV: the claim's class, access modes and size, on the real node's disk.

    No claimRef: a claim deleted and made again (a test's, say) binds again once `reopen` has
    made the volume Available; Retain keeps the files meanwhile, as the EFS class does."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume_name(claim),
                     "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "spec": {
            "capacity": {"storage": claim.storage},
            "accessModes": list(claim.access_modes),
            "storageClassName": claim.storage_class,
            "persistentVolumeReclaimPolicy": "Retain",
            "volumeMode": "Filesystem",
            # `local`, not hostPath: the kubelet applies a pod's fsGroup to it, as the notebooks
            # expect of their volumes, and Pod Security `restricted` admits the claim either way.
            "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}},
        },
    }


def _make_directory(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, OWNER_UID, OWNER_GID)
    # Group-writable and setgid: files stay in the users group whoever of the team writes them.
    path.chmod(0o2775)


def reopen(layout: Layout, claim: SharedClaim) -> None:
    """Make a Released stand-in Available again (its claim was deleted): what an administrator
    does with a retained static volume, so the next claim finds the same files."""
    phase = layout.kubectl(CLUSTER, "get", "pv", volume_name(claim), "--ignore-not-found",
                           "-o", "jsonpath={.status.phase}").strip()
    if phase == "Released":
        layout.kubectl(CLUSTER, "patch", "pv", volume_name(claim), "--type=json",
                       "-p", '[{"op": "remove", "path": "/spec/claimRef"}]')


def install(layout: Layout) -> Path:
    """Create the directory and apply the PV (idempotent); return the directory."""
    claim = install_claim()
    path = directory(layout, claim)
    _make_directory(path)
    layout.kubectl(CLUSTER, "apply", "--server-side", "--force-conflicts",
                   f"--field-manager={FIELD_MANAGER}", "-f", "-",
                   stdin=yaml.safe_dump(persistent_volume(claim, path)))
    reopen(layout, claim)
    return path

"""The learning overlay's Kubeflow integration and the team's shared volume, as `kubectl
kustomize` builds them: Kubeflow's spawner form offers exactly the notebook images, each in the
group whose routing its server expects; the Notebook API is Kubeflow's; every notebook server
mounts one ReadWriteMany EFS claim; and the dev environment's stand-in for EFS matches that claim
without being part of any install.

tests/cluster/test_install.py has the API server accept the build and shows a file on the shared
volume outliving the pod that wrote it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_notebook_images import last

from kakehashi.dev import images, shared_volume, tools
from kakehashi.dev.layout import Layout

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_TARGETS = ("jupyter", "code-server", "jupyter-code-server")
SHARED_MOUNT = "/home/jovyan/shared"


def kustomize(directory: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a directory, with the kubectl `dev up` builds (cached by content;
    `make test` runs `dev up` first, so this finds it built)."""
    k8s = next(tool for tool in tools.TOOLS if tool.name == "k8s")
    kubectl = tools.build(k8s) / "kubectl"
    result = subprocess.run([str(kubectl), "kustomize", str(REPO / directory)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def learning() -> list[dict[str, Any]]:
    return kustomize("manifests/overlays/learning")


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name} in the build"
    return found[0]


def spawner(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config = find(docs, "ConfigMap", "jupyter-web-app-config")
    assert config["metadata"]["namespace"] == "kubeflow", "the web app reads its own namespace"
    defaults: dict[str, Any] = yaml.safe_load(config["data"]["spawner_ui_config.yaml"])["spawnerFormDefaults"]
    return defaults


def reference(target: str, docs: list[dict[str, Any]]) -> str:
    """The image `target` is in the install: its repository, at the tag the overlay's operator
    settings use for the jupyter image (one release of the notebook images)."""
    (image,) = [i for i in images.PROJECT_IMAGES.values() if i.target == target
                and i.dockerfile == images.NOTEBOOK_DOCKERFILE]
    tag = find(docs, "ConfigMap", _settings_name(docs))["data"]["KAKEHASHI_BAKE_IMAGE"].rsplit(":", 1)[1]
    return f"{image.repository}:{tag}"


def _settings_name(docs: list[dict[str, Any]]) -> str:
    (name,) = [str(d["metadata"]["name"]) for d in docs if d["kind"] == "ConfigMap"
               and d["metadata"]["name"].startswith("kakehashi-settings")]
    return name


def takes_nb_prefix(target: str) -> bool:
    """Whether the image's server serves under NB_PREFIX (Jupyter Server, whose configuration
    takes it as the base URL) rather than at `/` (code-server)."""
    command = last(target, "CMD")
    assert ("jupyter" in command) != ("code-server" in command), f"{target}: which server? {command}"
    return "jupyter" in command


def test_the_spawner_offers_exactly_the_notebook_images(learning: list[dict[str, Any]]) -> None:
    form = spawner(learning)
    offered = [*form["image"]["options"], *form["imageGroupOne"]["options"], *form["imageGroupTwo"]["options"]]
    assert sorted(offered) == sorted(reference(t, learning) for t in NOTEBOOK_TARGETS)
    assert len(set(offered)) == len(offered), "an image offered twice"
    assert form["allowCustomImage"] is False, "only images whose stack TrainingRuns share"
    # The default server is the default training image, the one the operator's settings name.
    settings = find(learning, "ConfigMap", _settings_name(learning))["data"]
    assert form["image"]["value"] == settings["KAKEHASHI_BAKE_IMAGE"] == reference("jupyter", learning)
    assert form["imageGroupOne"]["value"] in form["imageGroupOne"]["options"]


@pytest.mark.parametrize("target", NOTEBOOK_TARGETS)
def test_each_image_is_in_the_group_whose_routing_its_server_expects(
        learning: list[dict[str, Any]], target: str) -> None:
    # `image`: the gateway forwards NB_PREFIX unchanged. `imageGroupOne`: the web app annotates
    # the Notebook notebooks.kubeflow.org/http-rewrite-uri: "/" and the gateway strips NB_PREFIX,
    # which a server with NB_PREFIX as its base URL (the combined image too) would answer 404.
    form = spawner(learning)
    group = "image" if takes_nb_prefix(target) else "imageGroupOne"
    assert reference(target, learning) in form[group]["options"]


def test_the_notebook_api_is_kubeflows(learning: list[dict[str, Any]]) -> None:
    crd = find(learning, "CustomResourceDefinition", "notebooks.kubeflow.org")["spec"]
    assert (crd["group"], crd["names"]["kind"], crd["names"]["plural"], crd["scope"]) == (
        "kubeflow.org", "Notebook", "notebooks", "Namespaced")
    versions = {v["name"]: v for v in crd["versions"]}
    assert set(versions) == {"v1", "v1beta1", "v1alpha1"}
    assert [name for name, v in versions.items() if v["storage"]] == ["v1"]
    for version in versions.values():
        assert version["served"] is True
        assert version["subresources"] == {"status": {}}, "the controller writes status"
        pod = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
        assert pod["required"] == ["containers"]
        assert pod["properties"]["containers"]["minItems"] == 1
        assert set(pod["properties"]["containers"]["items"]["required"]) == {"name", "image"}
    assert crd["conversion"] == {"strategy": "None"}, "the versions share one shape"


def test_the_shared_volume_is_one_rwx_efs_claim(learning: list[dict[str, Any]]) -> None:
    claim = find(learning, "PersistentVolumeClaim", "team-shared")
    assert claim["metadata"]["namespace"] == "kakehashi-notebooks"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every notebook, on any node, mounts it"
    storage_class = find(learning, "StorageClass", claim["spec"]["storageClassName"])
    assert storage_class["provisioner"] == "efs.csi.aws.com"
    parameters = storage_class["parameters"]
    assert parameters["provisioningMode"] == "efs-ap"
    assert parameters["fileSystemId"].startswith("fs-")
    assert int(parameters["directoryPerms"], 8) & 0o070 == 0o070, "the team's group writes"
    assert storage_class["reclaimPolicy"] == "Retain", "a deleted claim must not delete the team's data"
    # The access point writes as the notebooks' user, so files belong to whoever of the team.
    for statefulset in (d for d in learning if d["kind"] == "StatefulSet"):
        security = statefulset["spec"]["template"]["spec"]["securityContext"]
        assert (parameters["uid"], parameters["gid"]) == (str(security["runAsUser"]), str(security["fsGroup"]))


def test_every_notebook_server_mounts_the_shared_claim_inside_its_home(learning: list[dict[str, Any]]) -> None:
    servers = [d for d in learning if d["kind"] == "StatefulSet"
               and d["metadata"]["labels"].get("app.kubernetes.io/component") == "notebook"]
    assert {s["metadata"]["name"] for s in servers} == {"jupyter", "code-server"}
    for server in servers:
        pod = server["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[SHARED_MOUNT]]["persistentVolumeClaim"] == {"claimName": "team-shared"}
        assert mounts["/home/jovyan"] == "home", "HOME stays the server's own volume"
    # Kubeflow-spawned notebooks mount the same claim at the same place.
    (data,) = spawner(learning)["dataVolumes"]["value"]
    assert data == {"mount": SHARED_MOUNT,
                    "existingSource": {"persistentVolumeClaim": {"claimName": "team-shared"}}}


def test_production_has_neither_notebooks_nor_kubeflow() -> None:
    production = kustomize("manifests/overlays/production")
    kinds = {d["kind"] for d in production}
    assert not kinds & {"StatefulSet", "PersistentVolumeClaim", "StorageClass", "PersistentVolume"}
    assert not [d for d in production if d["metadata"]["name"] in ("notebooks.kubeflow.org", "kubeflow")]


def test_the_dev_stand_in_matches_the_claim_and_is_in_no_install(learning: list[dict[str, Any]]) -> None:
    claim = shared_volume.install_claim()
    installed = find(learning, "PersistentVolumeClaim", claim.name)["spec"]
    pv = shared_volume.persistent_volume(claim, Path("/data/team-shared"))["spec"]
    # What the PV controller compares before binding: class, access modes, size.
    assert pv["storageClassName"] == installed["storageClassName"]
    assert set(installed["accessModes"]) <= set(pv["accessModes"])
    assert pv["capacity"]["storage"] == installed["resources"]["requests"]["storage"]
    assert pv["persistentVolumeReclaimPolicy"] == "Retain"
    (term,) = pv["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "kubernetes.io/hostname", "operator": "In",
                                         "values": ["learning-real"]}]
    for overlay in ("manifests/overlays/learning", "."):
        assert "PersistentVolume" not in {d["kind"] for d in kustomize(overlay)}


def test_the_stand_in_directory_is_under_the_dev_environment(tmp_path: Path) -> None:
    claim = shared_volume.install_claim()
    layout = Layout(root=tmp_path, ports={})
    assert shared_volume.directory(layout, claim).is_relative_to(tmp_path), "`dev down` removes it"

"""The notebook images and their manifests, checked without a Docker engine (there is none here).

The Jupyter image is also the default training image, so what these tests hold (pinned bases,
a non-root user, git for the clone init container, the package installed, the libraries within
the package's supported range) is what every TrainingRun relies on.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "notebook-images"
NOTEBOOKS = REPO / "manifests" / "notebooks"
# image directory -> (manifest, image reference the manifest uses)
SERVERS = {
    "jupyter": ("jupyter.yaml", "kakehashi/notebook-jupyter:0.1.0"),
    "code-server": ("code-server.yaml", "kakehashi/notebook-code-server:0.1.0"),
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{dockerfile} ends inside a continued line"
    result = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def resolve(dockerfile: Path, reference: str) -> str:
    """A `FROM ${ARG}` reference as built by default: the ARG's declared default (the public
    image; `kakehashi dev images` passes a local base instead)."""
    match = re.fullmatch(r"\$\{(\w+)\}", reference)
    if not match:
        return reference
    for keyword, rest in instructions(dockerfile):
        name, _, default = rest.partition("=")
        if keyword == "ARG" and name == match.group(1) and default:
            return default
    raise AssertionError(f"{dockerfile}: FROM {reference} has no ARG default")


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


KEYWORDS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "USER", "WORKDIR", "EXPOSE", "ENTRYPOINT",
            "CMD", "LABEL", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}


@pytest.mark.parametrize("image", SERVERS)
def test_dockerfiles_parse(image: str) -> None:
    # A JSON CMD split over lines without a backslash is a syntax error only `docker build` sees.
    for keyword, rest in instructions(IMAGES / image / "Dockerfile"):
        assert keyword in KEYWORDS, f"{image}: {keyword} {rest}"


@pytest.mark.parametrize("image", SERVERS)
def test_base_images_are_pinned_to_a_version(image: str) -> None:
    for keyword, rest in instructions(IMAGES / image / "Dockerfile"):
        if keyword != "FROM":
            continue
        reference = resolve(IMAGES / image / "Dockerfile", rest.split()[0])
        name, _, tag = reference.rpartition(":")
        assert "@sha256:" in reference or (name and re.search(r"\d+\.\d+\.\d+", tag)), (
            f"{image}: FROM {reference} is not pinned to a full version or digest"
        )


@pytest.mark.parametrize("image", SERVERS)
def test_images_run_python_311_as_uid_1000(image: str) -> None:
    steps = final_stage(IMAGES / image / "Dockerfile")
    assert resolve(IMAGES / image / "Dockerfile", steps[0][1]).startswith("python:3.11.")
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users, f"{image} runs as root"
    # The uid must be numeric for Kubernetes' runAsNonRoot to verify it.
    assert users[-1].split(":")[0] == "1000"
    run = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert re.search(r"useradd .*--uid 1000 .*jovyan", run)


@pytest.mark.parametrize("image", SERVERS)
def test_images_have_git_and_the_kakehashi_package_and_no_kubectl(image: str) -> None:
    steps = final_stage(IMAGES / image / "Dockerfile")
    run = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\bgit\b", run), "the clone init container needs git"
    assert re.search(r'pip install "?/tmp/kakehashi(\[train\])?"?', run), (
        "kakehashi.trainer must be importable")
    assert "kubectl" not in (IMAGES / image / "Dockerfile").read_text()


@pytest.mark.parametrize("image", SERVERS)
def test_copied_sources_exist_in_the_build_context(image: str) -> None:
    for keyword, rest in final_stage(IMAGES / image / "Dockerfile"):
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources = [word for word in rest.split() if not word.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{image}: COPY {source} is not in the repository"


@pytest.mark.parametrize(("image", "server"), SERVERS.items())
def test_exposed_port_is_the_one_the_statefulset_probes(
    image: str, server: tuple[str, str]
) -> None:
    manifest, reference = server
    exposed = [rest for keyword, rest in final_stage(IMAGES / image / "Dockerfile")
               if keyword == "EXPOSE"]
    assert len(exposed) == 1
    documents = list(yaml.safe_load_all((NOTEBOOKS / manifest).read_text()))
    statefulset = next(d for d in documents if d["kind"] == "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == reference
    assert [str(p["containerPort"]) for p in container["ports"]] == [exposed[0]]
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = next(d for d in documents if d["kind"] == "Service")
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]


def test_every_notebook_server_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((NOTEBOOKS / "kustomization.yaml").read_text())
    for manifest, _ in SERVERS.values():
        assert manifest in kustomization["resources"]


def test_image_libraries_are_pinned_within_the_packages_supported_range() -> None:
    pins = {}
    for line in (IMAGES / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            assert str(requirement.specifier).startswith("=="), f"{line} is not pinned"
            pins[requirement.name] = str(requirement.specifier)[2:]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    supported = [Requirement(r) for r in project["optional-dependencies"]["train"]]
    for requirement in supported:
        assert requirement.name in pins, f"{requirement.name} missing from the images"
        assert requirement.specifier.contains(pins[requirement.name]), (
            f"{requirement.name}=={pins[requirement.name]} is outside {requirement.specifier}"
        )

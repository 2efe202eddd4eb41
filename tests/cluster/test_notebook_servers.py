"""The notebook images on the learning cluster's real node, run as Kubeflow's notebook controller
runs them: NB_PREFIX set to /notebook/<namespace>/<name>, the workspace volume (empty) mounted
at /home/jovyan, uid 1000 with fsGroup 100, the `notebook` ServiceAccount of
manifests/notebooks/rbac.yaml. The test reaches the pod on 8888 by its IP, as the gateway does.

The images are built from notebook-images/Dockerfile if the registry lacks them (content-cached;
`make test` builds them with `kakehashi dev images` first, so that a cold build, with its
progress shown, is not inside a test's timeout).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
import yaml
from kubernetes import client, utils
from kubernetes.stream import stream
from trainingruns import wait_for

from kakehashi import GROUP, VERSION
from kakehashi.dev import node, stack

RBAC = Path(__file__).resolve().parents[2] / "manifests" / "notebooks" / "rbac.yaml"
# Dockerfile target -> `kakehashi dev images` name
IMAGES = {"jupyter": "training", "code-server": "code-server",
          "jupyter-code-server": "jupyter-code-server"}
FAST = {"kwok.kakehashi.dev/run-duration": "1s"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of a kernel's tracebacks
STARTUP_S = 240  # a cold node pulls a 3 GB image from the local registry first


@pytest.fixture(scope="module")
def images(dev_env: Any) -> dict[str, str]:
    if not dev_env.real_nodes:
        pytest.skip(f"no real nodes on this machine: {dev_env.no_real_nodes_reason}")
    # Content-cached: the references of the current sources, built only if the registry lacks
    # them (what `dev up` listed may be of older sources).
    built = stack.build_images(list(IMAGES.values()))
    return {target: built[name] for target, name in IMAGES.items()}


@pytest.fixture
def notebook_namespace(learning: Any, namespace: str) -> str:
    """The test namespace with the notebook ServiceAccount, Role and RoleBinding."""
    for document in yaml.safe_load_all(RBAC.read_text()):
        utils.create_from_dict(learning, document, namespace=namespace)
    return namespace


class Notebook:
    """A notebook server pod as the Kubeflow notebook controller makes it."""

    def __init__(self, api: Any, namespace: str, name: str, image: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name
        self.prefix = f"/notebook/{namespace}/{name}"
        self.core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"notebook-name": name}},
            "spec": {
                "serviceAccountName": "notebook",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100,
                                    "fsGroup": 100},
                "nodeSelector": node.SELECTOR, "tolerations": [node.TOLERATION],
                "containers": [{
                    "name": name, "image": image,
                    "env": [{"name": "NB_PREFIX", "value": self.prefix}],
                    "ports": [{"name": "notebook-port", "containerPort": 8888}],
                    "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
                    "volumeMounts": [{"name": "workspace", "mountPath": "/home/jovyan"}],
                }],
                "volumes": [{"name": "workspace", "emptyDir": {}}],
            },
        })
        pod = wait_for(self._running, timeout=STARTUP_S, what=f"notebook pod {name} running")
        self.url = f"http://{pod.status.pod_ip}:8888"
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def _running(self) -> Any:
        pod = self.core.read_namespaced_pod(self.name, self.namespace)
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting
            if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff",
                                              "CrashLoopBackOff", "CreateContainerConfigError"):
                raise AssertionError(f"{self.name}: {waiting.reason}: {waiting.message}\n"
                                     f"{self.logs()}")
        if pod.status.phase == "Failed":
            raise AssertionError(f"{self.name} failed:\n{self.logs()}")
        return pod if pod.status.phase == "Running" and pod.status.pod_ip else None

    def logs(self) -> str:
        try:
            return str(self.core.read_namespaced_pod_log(self.name, self.namespace,
                                                         tail_lines=40))
        except client.exceptions.ApiException as error:
            return f"(no log: {error.reason})"

    def get(self, path: str, timeout: float = 120, **kwargs: Any) -> httpx.Response:
        """GET `path` once the server answers (connection refused until it listens)."""
        def answered() -> httpx.Response | None:
            self._running()  # a crashed server fails here, with its log
            try:
                response = self.http.get(path, **kwargs)
            except httpx.TransportError:
                return None
            # jupyter-server-proxy answers 5xx while the process it starts is not listening yet.
            return None if response.status_code in (502, 503, 504) else response

        response: httpx.Response = wait_for(answered, timeout=timeout, what=f"GET {path}")
        return response

    def exec(self, *command: str) -> str:
        return str(stream(self.core.connect_get_namespaced_pod_exec, self.name, self.namespace,
                          command=list(command), stderr=True, stdin=False, stdout=True,
                          tty=False))

    def run_cell(self, code: str, timeout: float = 180) -> str:
        """Run `code` as a notebook cell in a new Python kernel (the REST and websocket calls
        JupyterLab makes); what it printed to stdout. A cell that raises fails the test."""
        # As JupyterLab in a browser: the page sets the _xsrf cookie (only on a request that
        # carries none, so a second page load sets nothing), the client's jar sends it back
        # with every request (beside the anonymous user's cookie), and its value goes in the
        # X-XSRFToken header of every POST and DELETE (Jupyter Server checks it even without
        # a token: 403 "'_xsrf' argument missing from POST" otherwise).
        self.get(f"{self.prefix}/lab")
        xsrf = {"X-XSRFToken": self.http.cookies["_xsrf"]}
        kernel = self.http.post(f"{self.prefix}/api/kernels", json={"name": "python3"},
                                headers=xsrf)
        assert kernel.status_code == 201, kernel.text
        kernel_id = kernel.json()["id"]
        cookies = "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())
        ws = websocket.create_connection(
            f"ws://{self.url.removeprefix('http://')}{self.prefix}/api/kernels/{kernel_id}/channels",
            timeout=timeout, header=[f"Cookie: {cookies}"])
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        output: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                frame = ws.recv()
                if not isinstance(frame, str):
                    continue
                message = json.loads(frame)
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = message["msg_type"], message["content"]
                if kind == "stream" and content["name"] == "stdout":
                    output.append(content["text"])
                elif kind == "error":
                    traceback = "\n".join(content["traceback"])
                    raise AssertionError("the cell raised:\n" + ANSI.sub("", traceback))
                elif kind == "status" and content["execution_state"] == "idle":
                    return "".join(output)
            raise AssertionError(f"the cell did not finish in {timeout} s: {''.join(output)}")
        finally:
            ws.close()
            self.http.delete(f"{self.prefix}/api/kernels/{kernel_id}", headers=xsrf)

    def delete(self) -> None:
        # Captured: pytest shows the server's log with a failed test's output, once the pod
        # that held it is gone.
        print(f"--- log of {self.name}:\n{self.logs()}")
        self.http.close()
        self.core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)


@pytest.fixture
def notebook(learning: Any, notebook_namespace: str, images: dict[str, str]
             ) -> Iterator[Any]:
    started: list[Notebook] = []

    def start(target: str, name: str | None = None) -> Notebook:
        server = Notebook(learning, notebook_namespace, name or f"nb-{target}", images[target])
        started.append(server)
        return server

    yield start
    for server in started:
        server.delete()


def _in_the_pod(server: Notebook) -> None:
    """What every image holds: jovyan's uid and HOME, the package with the SDK, TensorFlow, git,
    and a home volume the server wrote to (it started on an empty one)."""
    assert server.exec("id", "-u").strip() == "1000"
    assert server.exec("id", "-gn").strip() == "users"
    out = server.exec("python", "-c", "import os, kakehashi, kakehashi.sdk, kakehashi.trainer, "
                      "tensorflow; print(os.environ['HOME'], kakehashi.__file__)")
    # The last line: exec's output carries TensorFlow's start-up lines on stderr first.
    assert re.match(r"/home/jovyan /usr/local/lib/python3\.11/site-packages/kakehashi/",
                    out.strip().splitlines()[-1]), out
    assert server.exec("git", "--version").startswith("git version 2.39")
    # The server wrote its state to the volume, as jovyan: the empty volume was writable.
    assert server.exec("stat", "-c", "%u", "/home/jovyan/.local").strip() == "1000"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("target", ["jupyter", "jupyter-code-server"])
def test_jupyterlab_answers_under_nb_prefix_on_8888_from_an_empty_volume(
        notebook: Any, target: str) -> None:
    server = notebook(target)
    lab = server.get(f"{server.prefix}/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    # Framed by the dashboard (same origin), and by no other site.
    assert lab.headers["content-security-policy"] == "frame-ancestors 'self'"
    assert "x-frame-options" not in lab.headers
    # The page's own URLs are under the prefix: nothing is fetched from the gateway's root.
    found = re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', lab.text, re.S)
    assert found, lab.text[:2000]
    config = json.loads(found.group(1))
    assert config["baseUrl"] == server.prefix + "/"
    status = server.get(f"{server.prefix}/api/status", headers={"Origin": "https://kubeflow.example"})
    assert status.status_code == 200 and "started" in status.json()
    assert status.headers["access-control-allow-origin"] == "*"
    assert server.get("/api/status").status_code == 404, "answered outside NB_PREFIX"
    _in_the_pod(server)
    assert server.run_cell("import kakehashi.sdk, tensorflow as tf\nprint(tf.__version__)"
                           ).strip() == "2.21.0"


@pytest.mark.timeout(1800)
def test_code_server_answers_on_8888_behind_the_gateways_rewrite(notebook: Any) -> None:
    # Kubeflow's http-rewrite-uri annotation strips NB_PREFIX: code-server serves /, with
    # relative URLs, so the pages it sends work under any prefix.
    server = notebook("code-server")
    assert server.get("/healthz").json()["status"] in ("alive", "expired")
    page = server.get("/", follow_redirects=True)
    assert page.status_code == 200 and "vscode-workbench-web-configuration" in page.text
    assert "x-frame-options" not in page.headers
    assert not re.search(r'(?:src|href)="/(?!/)', page.text), "an absolute URL escapes the prefix"
    _in_the_pod(server)


@pytest.mark.timeout(1800)
def test_vscode_runs_inside_jupyterlab_behind_jupyter_server_proxy(notebook: Any) -> None:
    server = notebook("jupyter-code-server")
    servers = server.get(f"{server.prefix}/server-proxy/servers-info").json()["server_processes"]
    assert [s["name"] for s in servers] == ["vscode"]
    assert servers[0]["launcher_entry"]["title"] == "VS Code"
    # The first request starts code-server (as jovyan, on the empty volume) and is proxied.
    page = server.get(f"{server.prefix}/vscode/", follow_redirects=True, timeout=180)
    assert page.status_code == 200 and "vscode-workbench-web-configuration" in page.text
    # The workbench talks to its server over a websocket, through the same proxy.
    host = server.url.removeprefix("http://")
    ws = websocket.create_connection(
        f"ws://{host}{server.prefix}/vscode/?reconnectionToken={uuid.uuid4()}"
        "&reconnection=false&skipWebSocketFrames=false", origin=server.url, timeout=30)
    try:
        assert ws.getstatus() == 101
    finally:
        ws.close()
    # Started by the server, so as jovyan, in the pod (no procps in the image: /proc).
    processes = server.exec("sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\000' ' '")
    assert "code-server --auth=none --bind-addr=127.0.0.1:" in processes, processes


@pytest.mark.timeout(1800)
def test_a_trainingrun_submitted_from_a_notebook_uses_the_pods_service_account(
        notebook: Any, learning: Any, notebook_namespace: str, operator: Any) -> None:
    server = notebook("jupyter-code-server")
    cell = (
        "from kakehashi.sdk import TrainingRun, connect\n"
        "run = TrainingRun('from-notebook', hyperparameters={'epochs': 1},\n"
        f"                  pod_annotations={FAST!r}).submit()\n"
        "print('who:', connect().identity())\n"
        "run.wait(timeout=120, progress=False)\n"
        "print('phase:', run.phase)\n"
    )
    output = server.run_cell(cell)
    account = f"system:serviceaccount:{notebook_namespace}:notebook"
    assert f"who: {account} via kakehashi sdk" in output, output
    assert "phase: Succeeded" in output, output
    runs = client.CustomObjectsApi(learning).list_namespaced_custom_object(
        GROUP, VERSION, notebook_namespace, "trainingruns")["items"]
    assert [r["metadata"]["name"] for r in runs] == ["from-notebook"]

    # Without the RoleBinding the same cell is refused, naming the pod's ServiceAccount: the
    # SDK used no other credentials.
    client.RbacAuthorizationV1Api(learning).delete_namespaced_role_binding(
        "notebook", notebook_namespace)
    refused = wait_for(lambda: _refused(server), timeout=30, what="the RoleBinding's removal")
    assert account in refused and "forbidden" in refused.lower(), refused


def _refused(server: Notebook) -> str | None:
    try:
        server.run_cell("from kakehashi.sdk import TrainingRun\n"
                        "TrainingRun('refused', hyperparameters={'epochs': 1}).submit()\n")
    except AssertionError as error:
        return str(error)
    return None

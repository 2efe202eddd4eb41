"""Which cluster, identity and namespace the SDK uses without being told: inside a pod its
service account (the token Kubernetes mounts, the API server from KUBERNETES_SERVICE_HOST) and
its namespace; elsewhere KUBECONFIG and its context's namespace. Checked by what reaches a local
HTTPS server standing in for the API server: the path (namespace) and the bearer token."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kakehashi.sdk import TrainingRun, connection


@dataclass
class ApiServer:
    """An HTTPS server answering every GET with an empty list, recording (path, "scheme credential")."""

    port: int
    ca: Path
    seen: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    key, cert = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kubernetes",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # The scheme is case-insensitive (RFC 9110): the in-cluster loader writes "bearer".
            scheme, _, credential = (self.headers.get("Authorization") or "").partition(" ")
            seen.append((self.path, f"{scheme.lower()} {credential}" if credential else None))
            body = json.dumps({"apiVersion": "kakehashi.dev/v1alpha1", "kind": "TrainingRunList", "items": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ApiServer(server.server_address[1], cert, seen)
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared connection yet, no pod files, no kubeconfig: each test sets what it needs."""
    monkeypatch.setattr(connection, "_default", None)
    monkeypatch.setattr(connection, "POD_NAMESPACE_FILE", tmp_path / "absent" / "namespace")
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config of this machine's


def test_inside_a_pod_the_sdk_uses_its_service_account_and_namespace(
        fresh: None, api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    # What Kubernetes mounts into every pod (projected service-account volume) and sets in its env.
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text("pod-token-1234")
    (mounted / "ca.crt").write_bytes(api_server.ca.read_bytes())
    (mounted / "namespace").write_text("team-a")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(mounted / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(mounted / "ca.crt"))
    monkeypatch.setattr(connection, "POD_NAMESPACE_FILE", mounted / "namespace")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api_server.port))

    assert TrainingRun.list() == []  # no kubeconfig, no namespace given: a notebook's first call
    assert api_server.seen == [("/apis/kakehashi.dev/v1alpha1/namespaces/team-a/trainingruns",
                                "bearer pod-token-1234")]
    assert connection.connect().namespace == "team-a"
    # An explicit namespace still wins over the pod's.
    TrainingRun.list(namespace="team-b")
    assert api_server.seen[-1] == ("/apis/kakehashi.dev/v1alpha1/namespaces/team-b/trainingruns",
                                   "bearer pod-token-1234")


def test_elsewhere_the_sdk_uses_kubeconfig_and_its_contexts_namespace(
        fresh: None, api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "laptop",
        "clusters": [{"name": "learning", "cluster": {"server": f"https://127.0.0.1:{api_server.port}",
                                                      "certificate-authority": str(api_server.ca)}}],
        "users": [{"name": "ada", "user": {"token": "laptop-token-5678"}}],
        "contexts": [{"name": "laptop", "context": {"cluster": "learning", "user": "ada", "namespace": "ada-dev"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    assert TrainingRun.list() == []
    assert api_server.seen == [("/apis/kakehashi.dev/v1alpha1/namespaces/ada-dev/trainingruns",
                                "bearer laptop-token-5678")]

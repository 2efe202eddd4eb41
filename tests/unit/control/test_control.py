"""The shared control core: which failures are temporary, how retries back off, settings and
their command line from one declaration, and the address rules both servers use."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from kakehashi.addresses import Allowlist, why_refused
from kakehashi.control.backoff import Backoff
from kakehashi.control.errors import PermanentError, TemporaryError, api_message, classify
from kakehashi.settings import OperatorSettings


def _api(status: int, message: str = "x", retry_after: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="r")
    error.body = json.dumps({"kind": "Status", "message": message})
    error.headers = {"Retry-After": retry_after} if retry_after else {}
    return error


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_temporary(status: int) -> None:
    assert isinstance(classify(_api(status)), TemporaryError)


@pytest.mark.parametrize("status", [400, 403, 422])
def test_refusals_are_permanent_and_keep_the_servers_words(status: int) -> None:
    kind = classify(_api(status, "spec.template.spec.tolerations[0].key: Invalid value"))
    assert isinstance(kind, PermanentError)
    assert "tolerations[0].key" in str(kind)


def test_retry_after_is_honoured() -> None:
    kind = classify(_api(429, retry_after="7"))
    assert isinstance(kind, TemporaryError) and kind.delay == 7.0


def test_s3_slowdown_and_transport_failures_are_temporary() -> None:
    slow = ClientError({"Error": {"Code": "SlowDown", "Message": "reduce"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert isinstance(classify(slow), TemporaryError)
    assert isinstance(classify(denied), PermanentError) and "AccessDenied" in api_message(denied)
    assert isinstance(classify(EndpointConnectionError(endpoint_url="http://s3")), TemporaryError)
    assert isinstance(classify(MaxRetryError(None, "/x")), TemporaryError)  # type: ignore[arg-type]
    assert isinstance(classify(ReadTimeoutError(None, "/x", "read timed out")), TemporaryError)  # type: ignore[arg-type]
    assert isinstance(classify(TimeoutError()), TemporaryError)
    assert classify(KeyError("bug")) is None  # not a remote answer: a bug, logged and retried


def test_backoff_grows_is_capped_and_jittered() -> None:
    plain = Backoff(base_s=1, factor=2, cap_s=30, jitter=0)
    assert [plain.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    jittered = Backoff(base_s=1, factor=2, cap_s=30, jitter=0.2)
    delays = {round(jittered.delay(3, random.Random(seed)), 6) for seed in range(20)}
    assert len(delays) > 10 and all(3.2 <= d <= 4.8 for d in delays)


def test_operator_settings_come_from_flags_then_environment_then_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from kakehashi.cli import main

    monkeypatch.setenv("KAKEHASHI_MODEL_BUCKET", "from-env")
    monkeypatch.setenv("KAKEHASHI_WEBHOOK_ALLOWLIST", "10.0.0.0/8, hooks.internal")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio:9000")
    settings = OperatorSettings()
    assert settings.model_bucket == "from-env"
    assert settings.webhook_allowlist == ["10.0.0.0/8", "hooks.internal"]
    assert settings.s3_endpoint == "http://minio:9000"
    assert OperatorSettings(model_bucket="from-flag").model_bucket == "from-flag"
    # --help shows each setting's real default and its variable: one declaration for both.
    result = CliRunner().invoke(main, ["operator", "run", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for field in OperatorSettings.model_fields:
        flag = "--" + field.replace("_", "-")
        assert flag in result.output, flag
        assert f"KAKEHASHI_{field.upper()}" in result.output
    text = " ".join(result.output.split())
    assert "[env KAKEHASHI_RESYNC_SECONDS; default: 30.0]" in text
    assert "[env KAKEHASHI_THREADS; default: 16]" in text


@pytest.mark.parametrize(("address", "refused"), [
    ("8.8.8.8", False), ("2001:4860:4860::8888", False), ("64:ff9b::808:808", False),
    ("10.1.2.3", True), ("169.254.169.254", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("64:ff9b::a9fe:a9fe", True), ("2002:a9fe:a9fe::1", True), ("::10.0.0.1", True), ("::ffff:0:a00:1", True),
    # 10.0.0.1 in the local-use NAT64 prefix as a /48 site embeds it (RFC 6052), with 8.8.8.8
    # in the low 32 bits a translator ignores.
    ("64:ff9b:1:a00:0:100:808:808", True),
])
def test_addresses_embedding_ipv4_are_judged_by_the_ipv4_address(address: str, refused: bool) -> None:
    assert (why_refused(ipaddress.ip_address(address)) is not None) == refused


def test_the_allowlist_permits_networks_and_host_names() -> None:
    allow = Allowlist(["10.0.0.0/8", "Hooks.Internal."])
    assert allow.permits("x", ipaddress.ip_address("10.9.9.9"))
    assert allow.permits("hooks.internal", ipaddress.ip_address("192.168.1.1"))
    assert not allow.permits("other", ipaddress.ip_address("192.168.1.1"))


def test_image_commands_start_without_the_operator_dependencies() -> None:
    """The bake Job's image (kakehashi[train]) has no kopf or kubernetes: its commands must start."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('kopf', 'kubernetes', 'kubeflow'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from kakehashi.cli import main\n"
        "main(['bake', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: " in result.stdout and "MODEL" in result.stdout


class _Api:
    """The one method of kubernetes.client.ApiClient the generic client calls, answering from
    a table of (method, path) -> status or body."""

    def __init__(self, answers: dict[tuple[str, str], int | dict[str, object]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def call_api(self, path: str, method: str, **_: object) -> object:
        self.calls.append((method, path))
        answer = self.answers[(method, path)]
        if isinstance(answer, int):
            raise _api(answer, f"HTTP {answer}")

        class Response:
            data = json.dumps(answer).encode()

        return Response()


def test_the_client_treats_409_on_create_as_done_and_404_as_gone() -> None:
    from kakehashi.control.client import Kube
    from kakehashi.control.resources import JOBS

    job = {"metadata": {"namespace": "team", "name": "digits", "uid": "u1"}}
    collection, item = JOBS.path("team"), JOBS.path("team", "digits")
    api = _Api({("POST", collection): 409, ("GET", item): job})
    assert Kube(api).create(JOBS, job) == (job, False)  # type: ignore[arg-type]
    assert api.calls == [("POST", collection), ("GET", item)]
    # Deleted between the 409 and the read: temporary, retried with backoff.
    vanished = Kube(_Api({("POST", collection): 409, ("GET", item): 404}))  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        vanished.create(JOBS, job)
    gone = Kube(_Api({("PATCH", JOBS.path("team", "digits", "status")): 404, ("DELETE", item): 404}))  # type: ignore[arg-type]
    assert gone.patch_status(JOBS, "team", "digits", {"status": {}}) is None
    assert gone.delete(JOBS, "team", "digits") is False
    refused = Kube(_Api({("POST", collection): 422}))  # type: ignore[arg-type]
    with pytest.raises(ApiException) as info:
        refused.create(JOBS, job)
    assert isinstance(classify(info.value), PermanentError)


def _operator_closure() -> set[str]:
    """The distributions `pip install kakehashi[operator]` brings: the base dependencies and the
    operator extra, and theirs, recursively (from this environment's installed metadata)."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["operator"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        extras = {"", *requirement.extras}
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    return seen


PROBED_ONLY = {"orjson", "msgspec"}


def test_the_operator_starts_with_only_its_extra_installed() -> None:
    """The operator image installs kakehashi[operator] and nothing else: every module
    `kakehashi operator run` imports must come from it (githubkit, for gitops delivery, once
    did not, and the image could not start)."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    allowed = sorted({top for top, dists in metadata.packages_distributions().items()
                      if {canonicalize_name(d) for d in dists} & _operator_closure()})
    script = (
        "import sys\n"
        f"allowed = set({allowed!r}) | set(sys.stdlib_module_names) | {{'kakehashi', '_distutils_hack'}}\n"
        # Optional speed-ups a dependency only probes for (python-json-logger: find_spec), which
        # a blocker cannot answer "absent" to; used if present, not needed.
        f"allowed |= set({sorted(PROBED_ONLY)!r})\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] not in allowed:\n"
        "            raise ModuleNotFoundError('not in kakehashi[operator]: ' + name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        # What run() imports before it starts kopf, and the leader election's module.
        "import boto3, kopf, prometheus_client\n"
        "from kakehashi import artifacts, metrics, runner\n"
        "from kakehashi.control import client, leader\n"
        "from kakehashi.serving import handlers, reconciler\n"
        "from kakehashi.training import handlers, reconciler\n"
        "from kakehashi.cli import main\n"
        "main(['operator', 'run', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--leader-election" in result.stdout

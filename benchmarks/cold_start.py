"""Cold-start benchmark: how soon a new serving process answers `/ready`, three ways side by side.

    .venv/bin/python benchmarks/cold_start.py            # ~10 minutes on 2 cores

- `compiled`: the model compiled once (`kakehashi compile`) and baked beside the SavedModel;
  the server verifies it and runs it on LiteRT, never importing TensorFlow (the light image).
- `convert_at_start`: the SavedModel only; TensorFlow is imported and converts it to TFLite
  at every start (what the server did before `kakehashi compile`).
- `download_at_start`: the same compiled model, first downloaded from an S3-compatible store
  (MinIO on loopback, the project's pinned build) by a separate process, then served: how
  KServe's storage initializer and SageMaker start, instead of a model baked into the image.

Each start is timed from process start to the first `GET /ready` 200 (polled every 10 ms), and
its RSS read at that moment; 5 starts each, interleaved (a, b, c, a, b, c ...) so noise from
other work on the machine falls on all three alike. MobileNetV2 (`weights=None`). Then the
Lambda handler's cold init (importing it and loading the compiled model, as Lambda's init
phase does) is measured inside 5 fresh processes, with its first call.

Results: `benchmarks/results/cold_start.json`, `{"results": [{"path", "ready_s_median",
"ready_s_max", "rss_mib"}], "lambda": {...}, "method": {...}}`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, build_mobilenet, rss_mib, stop

from kakehashi.dev.processes import free_port

RESULTS = ROOT / "benchmarks" / "results" / "cold_start.json"
BIN = Path(sys.executable).parent
BUCKET = "kakehashi-models"
S3_USER, S3_PASSWORD = "kakehashi", "kakehashi-secret"

DOWNLOAD = """
import os, sys, boto3
from pathlib import Path
endpoint, bucket, prefix, target = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=os.environ["S3_USER"],
                  aws_secret_access_key=os.environ["S3_PASSWORD"])
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        path = Path(target) / item["Key"][len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, item["Key"], str(path))
"""

LAMBDA_INIT = """
import time
started = time.perf_counter()
from kakehashi_inference import lambda_handler  # loads the model: AWS_LAMBDA_FUNCTION_NAME is set
init_s = time.perf_counter() - started
import base64, json, sys
event = json.loads(open(sys.argv[1]).read())
started = time.perf_counter()
response = lambda_handler.handler(event, None)
first_call_s = time.perf_counter() - started
assert response["statusCode"] == 200, response
print(json.dumps({"init_s": init_s, "first_call_s": first_call_s}))
"""


def minio_binary() -> Path:
    """The project's pinned MinIO build (what `kakehashi dev` runs). A build already in the
    cache is used, one under way (another session's `dev up`) waited for; else built here."""
    from kakehashi.dev import tools

    tool = next(t for t in tools.TOOLS if t.name == "minio")
    cache = tool.install_dir().parent
    deadline = time.monotonic() + 1800
    while True:
        built = sorted(cache.glob(f"minio-{tool.version}-*/minio"))
        if built:
            return built[-1]
        if not list(cache.glob(f"minio-{tool.version}-*.partial")):
            return tools.build(tool, progress=print) / "minio"
        if time.monotonic() > deadline:
            raise RuntimeError("a MinIO build under way did not finish in 30 minutes")
        print("waiting for a MinIO build under way to finish ...", flush=True)
        time.sleep(30)


def start_minio(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MINIO_ROOT_USER": S3_USER, "MINIO_ROOT_PASSWORD": S3_PASSWORD,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
    process = subprocess.Popen(
        [str(minio_binary()), "server", str(data), "--address", f"127.0.0.1:{port}", "--quiet"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{endpoint}/minio/health/live", timeout=1).status_code == 200:
                return process, endpoint
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"MinIO did not start:\n{log.read_text()[-2000:]}")


def upload(endpoint: str, model_dir: Path, prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_USER, aws_secret_access_key=S3_PASSWORD)
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        s3.upload_file(str(path), BUCKET, prefix + path.relative_to(model_dir).as_posix())


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_start(command: list[str], port: int, log: Path, env: dict[str, str],
                timeout: float = 900) -> tuple[float, float, float]:
    """Seconds from process start to the first /ready 200, the RSS (MiB) at that moment, and
    the CPU seconds the server used to get there (what an idle machine would take, about)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env={**os.environ, **env})
    try:
        with httpx.Client(timeout=5) as client:
            while time.perf_counter() - started < timeout:
                if process.poll() is not None:
                    raise RuntimeError(f"{command} exited:\n{log.read_text()[-3000:]}")
                try:
                    if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                        ready = time.perf_counter() - started
                        return ready, rss_mib(process.pid), cpu_seconds(process.pid)
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(f"{command} never became ready:\n{log.read_text()[-3000:]}")
    finally:
        stop(process)


def api_gateway_event(work: Path) -> Path:
    """An API Gateway HTTP API (payload 2.0) event: POST /v1/predict with one 640x480 JPEG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG")
    body = json.dumps({"images": [{"data": base64.b64encode(buffer.getvalue()).decode()}]})
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": "/v1/predict", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "bench.execute-api.local"},
        "requestContext": {"http": {"method": "POST", "path": "/v1/predict",
                                    "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                                    "userAgent": "bench"},
                           "requestId": "bench", "routeKey": "$default", "stage": "$default",
                           "accountId": "123456789012", "apiId": "bench",
                           "domainName": "bench.execute-api.local", "timeEpoch": 0},
        "body": body, "isBase64Encoded": False,
    }
    path = work / "event.json"
    path.write_text(json.dumps(event))
    return path


def lambda_init(python: str, model_dir: Path, event: Path, runs: int) -> dict[str, Any]:
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": "kakehashi-bench",
           "KAKEHASHI_MODEL_DIR": str(model_dir), "KAKEHASHI_MODEL_NAME": "mobilenetv2",
           "KAKEHASHI_RUNTIME": "compiled", "KAKEHASHI_LOG_LEVEL": "warning"}
    inits, calls = [], []
    for _ in range(runs):
        result = subprocess.run([python, "-c", LAMBDA_INIT, str(event)], env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        inits.append(measured["init_s"])
        calls.append(measured["first_call_s"])
        print(f"lambda init {measured['init_s']:.2f} s, first call "
              f"{measured['first_call_s']:.3f} s", flush=True)
    return {"init_s_median": round(statistics.median(inits), 3),
            "init_s_max": round(max(inits), 3),
            "first_call_s_median": round(statistics.median(calls), 3),
            "runs": runs, "runtime": "compiled"}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="starts per path")
    parser.add_argument("--paths", default="compiled,convert_at_start,download_at_start")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--light-venv", type=Path,
                        help="a virtualenv with only kakehashi[serve] (no TensorFlow), as in the "
                        "light image: the compiled paths run its kakehashi-serve")
    args = parser.parse_args()
    paths = args.paths.split(",")
    load_before = os.getloadavg()[0]

    from kakehashi.compile import compile_model

    with tempfile.TemporaryDirectory(prefix="kakehashi-cold-") as tmp:
        work = Path(tmp)
        uncompiled = build_mobilenet(work / "savedmodel-only")
        compiled = work / "compiled-model"
        shutil.copytree(uncompiled, compiled)
        record = compile_model(compiled)
        assert record.passed, record
        print(f"compiled in {record.seconds} s; max abs diff "
              f"{max(s.max_abs_diff or 0 for s in record.signatures):.2g}", flush=True)
        minio = None
        if "download_at_start" in paths:
            minio, endpoint = start_minio(work / "minio-data", work / "minio.log")
            upload(endpoint, compiled, "mobilenetv2/")
        serve = str(BIN / "kakehashi-serve")
        light = str(args.light_venv / "bin" / "kakehashi-serve") if args.light_venv else serve
        times: dict[str, list[float]] = {path: [] for path in paths}
        rss: dict[str, list[float]] = {path: [] for path in paths}
        cpu: dict[str, list[float]] = {path: [] for path in paths}
        try:
            for attempt in range(args.starts):
                for path in paths:
                    port = free_port()
                    common = ["--model-name", "mobilenetv2", "--host", "127.0.0.1",
                              "--port", str(port), "--log-level", "warning"]
                    env: dict[str, str] = {}
                    if path == "compiled":
                        command = [light, "--model-dir", str(compiled), "--runtime", "compiled",
                                   *common]
                    elif path == "convert_at_start":
                        command = [serve, "--model-dir", str(uncompiled), "--runtime", "convert",
                                   *common]
                    else:
                        target = work / f"download-{attempt}"
                        fetch = [sys.executable, "-c", DOWNLOAD, endpoint, BUCKET,
                                 "mobilenetv2/", str(target)]
                        serving = [light, "--model-dir", str(target), "--runtime", "compiled",
                                   *common]
                        # Two processes, one after the other, like an init container and then
                        # the server container; `exec` keeps the server's pid for its RSS.
                        command = ["/bin/sh", "-c",
                                   " ".join(map(_quote, fetch)) + " && exec "
                                   + " ".join(map(_quote, serving))]
                        env = {"S3_USER": S3_USER, "S3_PASSWORD": S3_PASSWORD}
                    ready, memory, used = timed_start(command, port, work / f"{path}.log", env)
                    times[path].append(ready)
                    rss[path].append(memory)
                    cpu[path].append(used)
                    print(f"{path:18} start {attempt + 1}: ready in {ready:6.2f} s, "
                          f"RSS {memory:6.0f} MiB, server CPU {used:5.2f} s", flush=True)
            event = api_gateway_event(work)
            python = str(args.light_venv / "bin" / "python") if args.light_venv else sys.executable
            lambda_result = lambda_init(python, compiled, event, args.starts)
        finally:
            if minio is not None:
                stop(minio)

    results = [
        {"path": path, "ready_s_median": round(statistics.median(times[path]), 3),
         "ready_s_max": round(max(times[path]), 3),
         "rss_mib": round(statistics.median(rss[path]), 1)}
        for path in paths
    ]
    report = {
        "results": results,
        "lambda": lambda_result,
        # CPU seconds the server process used until ready (median): the machine is shared, so
        # this says what its own work costs (the download runs in another process).
        "cpu_s_at_ready": {path: round(statistics.median(cpu[path]), 3) for path in paths},
        "method": {
            "model": "keras.applications.MobileNetV2(weights=None), 224x224, compiled: "
                     f"{', '.join(s.name for s in record.signatures)}",
            "ready_s": "process start to the first GET /ready 200 (polled every 10 ms)",
            "rss_mib": "VmRSS of the server process at that moment, median of the starts",
            "starts_per_path": args.starts,
            "download_at_start": "MinIO on loopback, boto3 in a separate process, then the "
                                 "server on the downloaded compiled model",
            "lambda": "import of kakehashi_inference.lambda_handler (model load included, as "
                      "in Lambda's init phase) measured inside the process, then one call",
            "cpus": len(os.sched_getaffinity(0)),
            # Other work on the machine (the 1-minute load average, before and after):
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "compiled_paths_python": "a virtualenv with only kakehashi[serve], no TensorFlow"
                                     if args.light_venv else "the development virtualenv",
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for item in results:
        print(f"{item['path']:18} median {item['ready_s_median']:6.2f} s, max "
              f"{item['ready_s_max']:6.2f} s, RSS {item['rss_mib']:6.0f} MiB")
    print(f"lambda init median {lambda_result['init_s_median']} s; wrote {args.output}")


def _quote(part: str) -> str:
    import shlex

    return shlex.quote(part)


if __name__ == "__main__":
    main()

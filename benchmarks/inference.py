"""Inference benchmark: Kakehashi's server against the usual FastAPI design, side by side.

    .venv/bin/python benchmarks/inference.py            # ~10 minutes on 2 cores

The servers get the same model (Keras MobileNetV2, `weights=None`: the real compute, nothing
to download; compiled once by `kakehashi compile` for Kakehashi, as the bake step does), the
same JPEG payloads (`/v1/predict`, JSON base64, one 640x480 photo-like image per request), and
load from a separate process (`wrk` with a Lua script for the POST bodies) at concurrency 1, 8
and 32. `kakehashi` is the server as shipped (batches follow the load: each takes its share of
the outstanding images per interpreter); `kakehashi-greedy` the same server with the previous
policy (a batch takes all that is queued, up to the maximum), to show the load-following policy
does not lose on two cores; `naive` the usual FastAPI + `model.predict` server. Reported per
point: images/s, p50 and p99 latency, errors, and images/s as a fraction of the machine's
physical limit:

    limit = CPUs x clock x 32 FP32 FLOP per cycle (AVX-512 or 2 AVX2 FMA units) / 0.6 GFLOP

(MobileNetV2 at 224x224 is 300 M multiply-adds). Results go to
`benchmarks/results/inference.json`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import ROOT, build_mobilenet, start, stop

from kakehashi.dev.processes import free_port

RESULTS = ROOT / "benchmarks" / "results" / "inference.json"
FLOP_PER_CYCLE = 32  # FP32, per core: 2 x 256-bit FMA, or 1 x 512-bit FMA
GFLOP_PER_IMAGE = 0.6  # MobileNetV2 224x224: ~300 M multiply-adds
WRK_SCRIPT = """
local bodies = {}
local next_body = 0
function init(args)
  for _, path in ipairs(args) do
    local file = io.open(path, "rb")
    bodies[#bodies + 1] = file:read("*a")
    file:close()
  end
end
function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, bodies[next_body])
end
function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_RESULT"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, "non_2xx": %d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
  out:close()
end
"""


def physical_limit() -> dict[str, float]:
    """Images/s the CPUs could reach if every cycle did useful FP32 FMA work."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)]
    cpus = len(os.sched_getaffinity(0))
    ghz = (sum(mhz) / len(mhz) / 1000) if mhz else 2.0
    limit = cpus * ghz * 1e9 * FLOP_PER_CYCLE / (GFLOP_PER_IMAGE * 1e9)
    return {"cpus": cpus, "ghz": round(ghz, 3), "limit": round(limit, 1)}


def make_payloads(directory: Path, count: int = 8) -> list[Path]:
    """Photo-like 640x480 JPEGs (smooth shapes plus sensor-like noise), as request bodies."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        image = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.integers(0, 640), rng.integers(0, 480)
            w, h = rng.integers(40, 300, 2)
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            draw.ellipse((int(x), int(y), int(x + w), int(y + h)), fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(3))
        noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (480, 640, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        body = json.dumps({"images": [{"data": base64.b64encode(buffer.getvalue()).decode()}]})
        path = directory / f"payload-{index}.json"
        path.write_text(body)
        paths.append(path)
    return paths


def wrk(port: int, concurrency: int, seconds: float, script: Path, payloads: list[Path],
        result: Path) -> dict[str, Any]:
    threads = min(2, concurrency)
    command = [shutil.which("wrk") or "/usr/bin/wrk", f"-t{threads}", f"-c{concurrency}",
               f"-d{seconds:g}s", "--timeout", "120s", "-s", str(script),
               f"http://127.0.0.1:{port}", "--", *map(str, payloads)]
    subprocess.run(command, check=True, capture_output=True,
                   env={**os.environ, "WRK_RESULT": str(result)})
    measured: dict[str, Any] = json.loads(result.read_text())
    return measured


def drain(port: int, payload: Path) -> None:
    """Wait until requests wrk left behind are answered, so the next point starts clean.

    wrk closes its connections when its time is up, but a server that already read their
    requests still computes them (the naive one, serving one request at a time, for seconds).
    Both servers answer in arrival order, so one more request returns once they are done.
    """
    httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=payload.read_bytes(),
               headers={"Content-Type": "application/json"}, timeout=600)


def measure(name: str, port: int, concurrency: int, args: argparse.Namespace, work: Path,
            script: Path, payloads: list[Path]) -> dict[str, Any]:
    result = work / f"wrk-{name}-{concurrency}.json"
    wrk(port, concurrency, args.warmup, script, payloads, result)  # discarded
    drain(port, payloads[0])
    raw = wrk(port, concurrency, args.duration, script, payloads, result)
    ok = raw["requests"] - raw["non_2xx"]
    return {
        "server": name,
        "concurrency": concurrency,
        "images_per_s": round(ok / (raw["duration_us"] / 1e6), 2),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "errors": raw["socket_errors"] + raw["non_2xx"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=3, help="seconds before each point")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--servers", default="kakehashi,kakehashi-greedy,naive")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--model-workers", type=int, help="kakehashi-serve --model-workers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    load_before = os.getloadavg()[0]
    machine = physical_limit()
    print(f"Physical limit: {machine['cpus']} CPUs x {machine['ghz']} GHz x {FLOP_PER_CYCLE} "
          f"FLOP/cycle / {GFLOP_PER_IMAGE} GFLOP = {machine['limit']} images/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="kakehashi-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_mobilenet(work / "mobilenetv2", keras_file=True)
        from kakehashi.compile import compile_model

        assert compile_model(model_dir).passed
        payloads = make_payloads(work)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        serve = [str(Path(sys.executable).parent / "kakehashi-serve"),
                 "--model-dir", str(model_dir), "--model-name", "mobilenetv2", "--runtime",
                 "compiled", "--host", "127.0.0.1", "--max-batch-size", str(args.max_batch_size),
                 *(["--model-workers", str(args.model_workers)] if args.model_workers else [])]
        commands = {
            "kakehashi": [*serve, "--batch-policy", "follow-load"],
            "kakehashi-greedy": [*serve, "--batch-policy", "greedy"],
            "naive": [sys.executable, str(ROOT / "benchmarks" / "naive_server.py"),
                      "--model-dir", str(model_dir), "--host", "127.0.0.1"],
        }
        results = []
        for name in args.servers.split(","):
            port = free_port()
            process = start([*commands[name], "--port", str(port)], port, work / f"{name}.log")
            try:
                for concurrency in levels:
                    point = measure(name, port, concurrency, args, work, script, payloads)
                    results.append(point)
                    print(f"{name:16} c={concurrency:<3} {point['images_per_s']:7.1f} images/s "
                          f"({point['images_per_s'] / machine['limit']:.0%} of limit)  "
                          f"p50 {point['p50_ms']:8.1f} ms  p99 {point['p99_ms']:8.1f} ms  "
                          f"errors {point['errors']}", flush=True)
            finally:
                stop(process)

    report = {
        "limit_images_per_s": machine["limit"],
        "results": results,
        "machine": {"cpus": machine["cpus"], "ghz": machine["ghz"],
                    # Other work on the machine (the 1-minute load average, before and after):
                    "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "flop_per_cycle": FLOP_PER_CYCLE, "gflop_per_image": GFLOP_PER_IMAGE},
        "method": {"model": "keras.applications.MobileNetV2(weights=None), 224x224; kakehashi: "
                            "compiled (kakehashi compile), LiteRT",
                   "payload": "640x480 JPEG q90, JSON base64, 1 image per request",
                   "load": "wrk (separate process), closed loop",
                   "duration_s": args.duration, "warmup_s": args.warmup,
                   "kakehashi_max_batch_size": args.max_batch_size},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()

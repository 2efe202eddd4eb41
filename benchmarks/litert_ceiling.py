"""The interpreters' own ceiling: what LiteRT alone gives for MobileNetV2 on this machine.

    .venv/bin/python benchmarks/litert_ceiling.py        # ~1 minute

`inference.py` reports the server against the FLOP limit of the CPUs; this measures what the
same compiled model gives with no HTTP, no JSON and no JPEG decoding: one single-threaded
interpreter per thread (as the server's model workers run), batch 1 and batch 16, 1 thread and
one per CPU, random inputs, closed loop. The server's figures divided by this one show how much
the serving path itself costs. Results go to `benchmarks/results/litert_ceiling.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, build_mobilenet

RESULTS = ROOT / "benchmarks" / "results" / "litert_ceiling.json"


def images_per_s(model: Path, batch: int, threads: int, seconds: float) -> float:
    from ai_edge_litert.interpreter import Interpreter

    counts = [0] * threads
    ready = threading.Barrier(threads + 1)
    deadline = [float("inf")]  # set once every interpreter is warm

    def work(index: int) -> None:
        interpreter = Interpreter(model_path=str(model), num_threads=1)
        detail = interpreter.get_input_details()[0]
        shape = [batch, *detail["shape"][1:]]
        interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        images = np.random.default_rng(index).random(shape, dtype=np.float32)
        interpreter.set_tensor(detail["index"], images)
        interpreter.invoke()  # warm
        ready.wait()
        while time.monotonic() < deadline[0]:
            interpreter.set_tensor(detail["index"], images)
            interpreter.invoke()
            counts[index] += batch

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.monotonic()
    deadline[0] = started + seconds
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kakehashi-ceiling-") as tmp:
        model_dir = build_mobilenet(Path(tmp) / "mobilenetv2")
        from kakehashi.compile import compile_model

        assert compile_model(model_dir).passed
        model = model_dir / "compiled" / "serving_default.tflite"
        results = []
        for batch in (1, 16):
            for threads in sorted({1, cpus}):
                rate = images_per_s(model, batch, threads, args.seconds)
                results.append({"batch": batch, "threads": threads, "images_per_s": round(rate, 1)})
                print(f"batch {batch:2d}, {threads} thread(s): {rate:6.1f} images/s", flush=True)
    report = {"results": results, "cpus": cpus,
              "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "method": "compiled MobileNetV2 (weights=None, 224x224), one single-threaded LiteRT "
                        "interpreter per thread, random float32 inputs, closed loop"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()

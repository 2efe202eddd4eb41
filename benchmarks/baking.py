"""Baking benchmark: a model into a serving image by layer append, against crane and rebuilds.

    .venv/bin/python benchmarks/baking.py              # 10, 100, 500 MB: ~15 minutes on 2 cores
    .venv/bin/python benchmarks/baking.py --sizes 100 --methods append,crane_append

Every method bakes the same model (random bytes: trained weights barely compress) onto the
same base image (~200 MB: a passwd layer and real shared libraries of this machine, gzip-6, as
a slim Python base is) and pushes to the same registry: a CNCF distribution registry (the dev
environment's binary) started for the run on loopback, fresh storage, so no method finds
another's blobs. Each push goes through a TCP relay that counts the bytes sent to the registry
(headers and bodies, all requests), for every method alike.

- `append`: `kakehashi.bake.bake` (directory -> reproducible uncompressed tar -> HEAD/mount/
  chunked upload -> config and manifest), timed from the model directory to the pushed digest.
- `crane_append`: `tar` (GNU, reproducible flags) of the same directory as the same path, then
  `crane append` (go-containerregistry v0.22.1, built from its Go module: tools/crane).
- `rebuild_warm`: `buildah build` of `FROM <base>` + `COPY --chown=10001:10001 model/
  /models/<name>/` and `buildah push`, the base already in local storage (overlay driver).
- `rebuild_cold`: the same with fresh storage: the base is pulled first, as a CI runner does.

Each size runs `--repeats` rounds (default 3), each with a freshly generated model, the
methods taking turns within a round; `seconds` and `bytes_uploaded` are the medians of the
rounds (each a first bake of that model into a fresh repository; every round's figures are
under `runs`). After the last round each method bakes that round's model again into another
fresh repository; `reproducible` says whether both gave the same image digest. A method that cannot run here is listed under `missed` with the reason, never
given a figure. Results: `benchmarks/results/baking.json`.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kakehashi.bake.bake import bake
from kakehashi.bake.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from kakehashi.bake.registry import Registry
from kakehashi.dev import tools
from kakehashi.dev.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "baking.json"
METHODS = ("append", "crane_append", "rebuild_warm", "rebuild_cold")
MODEL_NAME = "model"
BASE_REPOSITORY = "bench/base"
BASE_TAG = "v1"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the registry and the relay that counts what reaches it ----------------------------------

class CountingRelay:
    """A loopback TCP relay in front of the registry; counts bytes clients send through it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        try:
            while True:
                size = source.recv_into(buffer)
                if not size:
                    break
                target.sendall(view[:size])
                if count:
                    with self._lock:
                        self.sent += size
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def start_registry(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    tool = next(t for t in tools.TOOLS if t.name == "registry")
    binary = tools.build(tool, say) / "registry"
    port = free_port()
    config = workdir / "registry.json"  # YAML is a superset of JSON
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "registry-data")}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([str(binary), "serve", str(config)], stdout=log, stderr=log,
                               env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the registry did not start: {(workdir / 'registry.log').read_text()}")


# -- the base image and the models -----------------------------------------------------------

def _tar_gz(entries: list[tuple[str, Path | bytes]], level: int) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in entries:
            data = source if isinstance(source, bytes) else source.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return gzip.compress(plain, compresslevel=level, mtime=0), \
        "sha256:" + hashlib.sha256(plain).hexdigest()


def base_files(limit: int) -> list[tuple[str, Path]]:
    """Real shared libraries of this machine, up to `limit` bytes: what a base image holds."""
    chosen: list[tuple[str, Path]] = []
    total = 0
    for directory in (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib"), Path("/usr/bin")):
        for path in sorted(directory.rglob("*")):
            if total >= limit:
                return chosen
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if size > 64 << 20:
                continue
            chosen.append((str(path).lstrip("/"), path))
            total += size
    return chosen


def push_base(registry: Registry, base_mb: int) -> str:
    """A ~base_mb OCI image: a passwd layer (uid 10001) and two layers of real libraries."""
    files = base_files(base_mb << 20)
    half = len(files) // 2
    layers = [_tar_gz([("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"
                                      b"kakehashi:x:10001:10001::/nonexistent:/bin/false\n")], 6)]
    say(f"Base: compressing {len(files)} files ({base_mb} MB), gzip -6, once")
    layers += [_tar_gz(files[:half], 6), _tar_gz(files[half:], 6)]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "User": "10001:10001",
                   "Entrypoint": ["/bin/false"]},
        "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"}
                    for i in range(len(layers))],
    }).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config),
                   "digest": registry.push_blob(BASE_REPOSITORY, config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "size": len(blob),
                    "digest": registry.push_blob(BASE_REPOSITORY, blob)} for blob, _ in layers],
    }
    size = sum(len(blob) for blob, _ in layers)
    digest = registry.push_manifest(BASE_REPOSITORY, BASE_TAG, manifest, OCI_MANIFEST)
    say(f"Base: {size / 1e6:.0f} MB compressed in {len(layers)} layers, {digest[:19]}…")
    return digest


def make_model(directory: Path, megabytes: int) -> Path:
    """savedmodel/ with `megabytes` of random weights, labels.json: a model as it is stored."""
    variables = directory / "savedmodel" / "variables"
    variables.mkdir(parents=True)
    with (variables / "variables.data-00000-of-00001").open("wb") as out:
        for _ in range(megabytes):
            out.write(os.urandom(1 << 20))
    (variables / "variables.index").write_bytes(os.urandom(4096))
    (directory / "savedmodel" / "saved_model.pb").write_bytes(os.urandom(64 << 10))
    (directory / "labels.json").write_text(json.dumps([str(i) for i in range(10)]))
    return directory


# -- the methods -----------------------------------------------------------------------------

class Bench:
    def __init__(self, workdir: Path, relay: CountingRelay) -> None:
        self.workdir = workdir
        self.relay = relay
        self.address = f"127.0.0.1:{relay.port}"
        self.base = f"{self.address}/{BASE_REPOSITORY}:{BASE_TAG}"
        self.crane: Path | None = None
        self.warm_root = workdir / "buildah-warm"

    def target(self, method: str, megabytes: int) -> str:
        return f"{self.address}/bench/{method.replace('_', '-')}-{megabytes}-{uuid.uuid4().hex[:6]}"

    def measure(self, run: Callable[[str], str], method: str, megabytes: int
                ) -> tuple[float, int, str]:
        repository = self.target(method, megabytes)
        before = self.relay.sent
        started = time.perf_counter()
        digest = run(repository)
        return time.perf_counter() - started, self.relay.sent - before, digest

    # append ---------------------------------------------------------------------------------
    def append(self, model: Path, repository: str) -> str:
        result = bake(model, self.base, repository, service="bench", model_name=MODEL_NAME,
                      compile_hook=None, insecure=True, workdir=self.workdir / "bake")
        return result.digest

    # crane append ---------------------------------------------------------------------------
    def crane_append(self, model: Path, repository: str) -> str:
        assert self.crane is not None
        layer = self.workdir / "crane-layer.tar"
        subprocess.run(["tar", "-C", str(model), "--sort=name", "--mtime=@0", "--owner=10001",
                        "--group=10001", "--numeric-owner", "--mode=u+rwX,go+rX,go-w",
                        "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,"
                        "delete=atime,delete=ctime",
                        "--transform", f"s,^\\.,models/{MODEL_NAME},", "-cf", str(layer), "."],
                       check=True)
        out = subprocess.run([str(self.crane), "append", "--insecure", "-b", self.base,
                              "-f", str(layer), "-t", f"{repository}:bench"],
                             check=True, capture_output=True, text=True)
        layer.unlink()
        return out.stdout.strip().rsplit("@", 1)[-1]

    # rebuilds -------------------------------------------------------------------------------
    def buildah(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"),
               "--storage-driver", "overlay", *args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{done.stderr[-3000:]}")
        return done

    def rebuild(self, model: Path, repository: str, root: Path) -> str:
        context = self.workdir / "context"
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir()
        (context / "Dockerfile").write_text(
            f"FROM {self.base}\nCOPY --chown=10001:10001 model/ /models/{MODEL_NAME}/\n")
        shutil.copytree(model, context / "model", copy_function=os.link)  # as `cp -al`
        tag = f"localhost/bench:{uuid.uuid4().hex[:8]}"
        self.buildah(root, "build", "--tls-verify=false", "--isolation", "chroot",
                     "-f", str(context / "Dockerfile"), "-t", tag, str(context))
        digest_file = self.workdir / "pushed.digest"
        self.buildah(root, "push", "--tls-verify=false", "--digestfile", str(digest_file), tag,
                     f"docker://{repository}:bench")
        self.buildah(root, "rmi", tag)
        return digest_file.read_text().strip()

    def prepare_warm(self) -> None:
        self.buildah(self.warm_root, "pull", "--tls-verify=false", self.base)

    def rebuild_warm(self, model: Path, repository: str) -> str:
        return self.rebuild(model, repository, self.warm_root)

    def rebuild_cold(self, model: Path, repository: str) -> str:
        root = self.workdir / f"buildah-cold-{uuid.uuid4().hex[:6]}"
        try:
            return self.rebuild(model, repository, root)
        finally:
            self.buildah_cleanup(root)

    def buildah_cleanup(self, root: Path) -> None:
        # overlay storage keeps a mount of its own directory: undo it before removing.
        subprocess.run(["buildah", "--root", str(root / "storage"), "--runroot",
                        str(root / "run"), "--storage-driver", "overlay", "rm", "--all"],
                       capture_output=True)
        subprocess.run(["umount", "-R", str(root / "storage" / "overlay")], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def unavailable(method: str) -> str | None:
    """Why `method` cannot run on this machine, or None."""
    if method.startswith("rebuild") and shutil.which("buildah") is None:
        return "buildah is not installed (scripts/bootstrap.sh installs it; or apt-get install " \
               "buildah)"
    if method.startswith("rebuild") and "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (the warm rebuild's best case)"
    if method == "crane_append" and shutil.which("go") is None:
        return "Go is not installed: crane is built from its Go module"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500", help="model sizes in MB")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--base-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds per size (a fresh model each); seconds is the median")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in METHODS:
            parser.error(f"unknown method {method}")

    workdir = Path(tempfile.mkdtemp(prefix="kakehashi-bench-", dir=args.workdir))
    process, port = start_registry(workdir)
    relay = CountingRelay(("127.0.0.1", port))
    bench = Bench(workdir, relay)
    results: list[dict[str, Any]] = []
    raw_runs: list[dict[str, Any]] = []
    missed: list[dict[str, str]] = []
    try:
        with Registry(bench.address, insecure=True) as registry:
            base_digest = push_base(registry, args.base_mb)
        runnable = []
        for method in methods:
            why = unavailable(method)
            if why is None and method == "crane_append":
                try:
                    bench.crane = tools.build(tools.CRANE, say) / "crane"
                except Exception as error:
                    why = f"crane did not build: {error}"
            if why is None and method == "rebuild_warm":
                try:
                    bench.prepare_warm()
                except Exception as error:
                    why = f"buildah could not pull the base: {error}"
            if why:
                say(f"{method}: missed ({why})")
                missed.append({"method": method, "why": why})
            else:
                runnable.append(method)
        for megabytes in sizes:
            runs: dict[str, list[tuple[float, int]]] = {m: [] for m in runnable}
            digests: dict[str, tuple[str, str]] = {}
            failed: set[str] = set()
            for repeat in range(args.repeats):
                # A fresh model each round, so no method finds the last round's layer anywhere;
                # the methods take turns within a round, under the same load.
                model = make_model(workdir / f"model-{megabytes}-{repeat}", megabytes)
                for method in runnable:
                    if method in failed:
                        continue
                    run = functools.partial(getattr(bench, method), model)
                    try:
                        seconds, sent, first = bench.measure(run, method, megabytes)
                        if repeat == args.repeats - 1:  # the same model again, fresh repository
                            _, _, second = bench.measure(run, method, megabytes)
                            digests[method] = (first, second)
                    except Exception as error:
                        say(f"{method} {megabytes} MB: failed: {error}")
                        missed.append({"method": method, "model_mb": str(megabytes),
                                       "why": f"failed: {str(error)[-500:]}"})
                        failed.add(method)
                        continue
                    runs[method].append((seconds, sent))
                    say(f"{megabytes:>4} MB  {method:<13} {seconds:7.2f} s  "
                        f"{sent / 1e6:8.1f} MB sent  (round {repeat + 1}/{args.repeats})")
                shutil.rmtree(model)
            for method in runnable:
                if method in failed or not runs[method]:
                    continue
                seconds = statistics.median(s for s, _ in runs[method])
                sent = int(statistics.median(b for _, b in runs[method]))
                first, second = digests[method]
                results.append({"model_mb": megabytes, "method": method,
                                "seconds": round(seconds, 3), "bytes_uploaded": sent,
                                "reproducible": first == second})
                raw_runs.append({"model_mb": megabytes, "method": method,
                                 "seconds": [round(s, 3) for s, _ in runs[method]],
                                 "bytes_uploaded": [b for _, b in runs[method]],
                                 "digests_same_model": [first, second]})
                say(f"{megabytes:>4} MB  {method:<13} median {seconds:7.2f} s  "
                    f"{sent / 1e6:8.1f} MB sent  reproducible={first == second}")
    finally:
        relay.close()
        process.terminate()
        process.wait(timeout=30)
        if bench.warm_root.exists():
            bench.buildah_cleanup(bench.warm_root)
        shutil.rmtree(workdir, ignore_errors=True)

    summary = ratios(results)
    out = {
        "results": results,
        "missed": missed,
        "targets_at_100mb": summary,
        "runs": raw_runs,
        "setup": {
            "base_mb": args.base_mb, "base_digest": base_digest,
            "registry": "distribution v3.1.2 on loopback, fresh storage, through a counting "
                        "TCP relay (same for every method)",
            "append_layer": "uncompressed tar (see kakehashi/bake/layer.py)",
            "cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    say(json.dumps(summary, indent=2))
    say(f"wrote {args.output}")


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    at = {r["method"]: r for r in results if r["model_mb"] == 100}
    if "append" not in at:
        return {}
    append = at["append"]["seconds"]
    summary: dict[str, Any] = {"append_seconds": append,
                               "append_reproducible": at["append"]["reproducible"]}
    for method, target, kind in (("rebuild_warm", 3.0, "faster"), ("rebuild_cold", 10.0, "faster"),
                                 ("crane_append", 1.2, "no_slower")):
        if method not in at:
            continue
        ratio = at[method]["seconds"] / append
        if kind == "faster":
            summary[f"speedup_vs_{method}"] = round(ratio, 2)
            summary[f"target_{target:g}x_vs_{method}_met"] = ratio >= target
        else:
            summary["append_over_crane"] = round(append / at[method]["seconds"], 2)
            summary["target_within_1.2x_of_crane_met"] = append <= target * at[method]["seconds"]
    return summary


if __name__ == "__main__":
    main()

"""Dynamic batching: concurrent images share model calls, a bad image fails alone, and thread
counts follow the container's CPU quota."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from inference_helpers import b64, jpeg

from kakehashi_inference.batching import Batcher
from kakehashi_inference.cgroup import cpu_quota, cpu_threads
from kakehashi_inference.metrics import Metrics


class SlowModel:
    """Doubles its input; records batch sizes; refuses NaN like a model might crash on it."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        time.sleep(self.seconds)
        if np.isnan(batch).any():
            raise ValueError("NaN in input")
        return batch * 2


def make_batcher(model: SlowModel, max_batch_size: int = 4, max_wait_s: float = 0.0,
                 parallel: int = 1) -> Batcher:
    return Batcher(model, max_batch_size=max_batch_size, max_wait_s=max_wait_s,
                   executor=ThreadPoolExecutor(parallel), metrics=Metrics(), parallel=parallel)


async def submit_all(batcher: Batcher, values: list[float]) -> list[object]:
    results = await asyncio.gather(
        *(batcher.submit(np.array([value], np.float32)) for value in values),
        return_exceptions=True,
    )
    await batcher.aclose()
    return results


def test_concurrent_images_share_model_calls_up_to_the_max_batch() -> None:
    model = SlowModel()
    results = asyncio.run(submit_all(make_batcher(model), [float(i) for i in range(10)]))
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(10)]  # type: ignore[index]
    assert max(model.batches) == 4
    assert len(model.batches) <= 4  # not 10 calls


def test_parallel_model_slots_run_batches_side_by_side() -> None:
    model = SlowModel(seconds=0.2)
    started = time.perf_counter()
    results = asyncio.run(submit_all(make_batcher(model, max_batch_size=4, parallel=2),
                                     [float(i) for i in range(8)]))
    elapsed = time.perf_counter() - started
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(8)]  # type: ignore[index]
    assert sorted(model.batches) == [4, 4]
    assert elapsed < 0.35, "two batches of 0.2 s should overlap"


def test_a_lone_image_does_not_wait_for_company() -> None:
    model = SlowModel(seconds=0)
    started = time.perf_counter()
    asyncio.run(submit_all(make_batcher(model), [1.0]))
    assert time.perf_counter() - started < 0.5
    assert model.batches == [1]


def test_max_wait_gathers_images_arriving_later() -> None:
    model = SlowModel(seconds=0)

    async def staggered() -> None:
        batcher = make_batcher(model, max_batch_size=8, max_wait_s=0.2)
        tasks = []
        for value in range(3):
            tasks.append(asyncio.create_task(batcher.submit(np.array([value], np.float32))))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        await batcher.aclose()

    asyncio.run(staggered())
    assert model.batches == [3]


def test_a_bad_image_fails_alone_and_its_batch_mates_succeed() -> None:
    model = SlowModel(seconds=0.01)
    results = asyncio.run(submit_all(make_batcher(model), [1.0, float("nan"), 3.0]))
    assert float(results[0][0]) == 2.0  # type: ignore[index]
    assert isinstance(results[1], ValueError)
    assert float(results[2][0]) == 6.0  # type: ignore[index]


def test_concurrent_requests_through_the_server_are_batched(client: TestClient) -> None:
    payloads = [{"images": [{"data": b64(jpeg((i * 20, 90, 90)))}]} for i in range(12)]
    barrier = threading.Barrier(12)

    def call(payload: dict[str, object]) -> int:
        barrier.wait()
        return client.post("/v1/predict", json=payload).status_code

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(call, payloads)) == [200] * 12
    metrics = client.get("/metrics").text
    count = _sample(metrics, "kakehashi_inference_batch_size_count")
    total = _sample(metrics, "kakehashi_inference_batch_size_sum")
    assert total == 12
    assert count < 12, "every image ran in a model call of its own"


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cpu_quota_is_read_from_cgroup_v2_or_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    assert cpu_quota(tmp_path) == quota


@pytest.mark.parametrize(
    ("cpu_max", "cpus", "threads"),
    [
        ("50000 100000\n", 8, 1),  # half a CPU: one thread
        ("150000 100000\n", 8, 2),  # 1.5 CPUs: rounded up
        ("400000 100000\n", 8, 4),
        ("400000 100000\n", 2, 2),  # never more than the CPUs we may run on
        ("max 100000\n", 6, 6),  # no quota: every CPU we may run on
    ],
)
def test_threads_follow_the_quota_not_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, cpus: int, threads: int
) -> None:
    monkeypatch.setattr("kakehashi_inference.cgroup.available_cpus", lambda: cpus)
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert cpu_threads(tmp_path) == threads


@pytest.mark.parametrize(
    ("parallel", "queued", "in_flight", "expected"),
    [
        (2, 32, 0, 16),  # two cores: wide batches win
        (2, 16, 16, 16),
        (16, 32, 0, 2),  # sixteen interpreters: keep every one busy
        (16, 16, 16, 2),
        (16, 3, 0, 1),
        (1, 100, 0, 16),  # never over the maximum
        (2, 1, 0, 1),
    ],
)
def test_batch_size_follows_the_load(parallel: int, queued: int, in_flight: int,
                                     expected: int) -> None:
    batcher = make_batcher(SlowModel(), max_batch_size=16, parallel=parallel)
    batcher._in_flight = in_flight
    assert batcher.batch_size(queued) == expected


def test_the_greedy_policy_takes_everything_queued_up_to_the_maximum() -> None:
    batcher = Batcher(SlowModel(), max_batch_size=16, max_wait_s=0,
                      executor=ThreadPoolExecutor(1), metrics=Metrics(), parallel=16,
                      follow_load=False)
    assert batcher.batch_size(32) == 16


def test_many_slots_share_a_burst_instead_of_one_taking_it_all() -> None:
    model = SlowModel(seconds=0.05)
    asyncio.run(submit_all(make_batcher(model, max_batch_size=16, parallel=8),
                           [float(i) for i in range(16)]))
    assert max(model.batches) <= 2, model.batches

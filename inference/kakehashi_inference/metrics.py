"""Prometheus metrics, in a registry per server so tests and embedded servers never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "kakehashi_inference_request_duration_seconds",
            "Time from request received to response sent.",
            ["route", "method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # One histogram per stage (download, decode, queue, predict), as KServe does: when the
        # latency rises, this says where.
        self.stage_seconds = Histogram(
            "kakehashi_inference_stage_duration_seconds",
            "Time spent per image in each stage of a prediction.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kakehashi_inference_batch_size",
            "Images per model call.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "kakehashi_inference_queue_depth",
            "Images waiting for a model call.",
            registry=self.registry,
        )
        self.images = Counter(
            "kakehashi_inference_images_total",
            "Images received, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.model_info = Info(
            "kakehashi_inference_model",
            "The model being served.",
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "kakehashi_inference_model_ready",
            "1 once the model is loaded and warmed up.",
            registry=self.registry,
        )

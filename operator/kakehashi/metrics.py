"""The operator's Prometheus metrics (scraped from `kakehashi operator run --metrics-port`)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

RECONCILES: Final = Counter(
    "kakehashi_reconciles_total", "Reconciles by resource and result.", ["resource", "result"]
)
RECONCILE_SECONDS: Final = Histogram(
    "kakehashi_reconcile_duration_seconds",
    "Time to reconcile one object.",
    ["resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUNS: Final = Gauge("kakehashi_trainingruns", "TrainingRuns known to the operator, by phase.", ["phase"])
CHILDREN_CREATED: Final = Counter(
    "kakehashi_training_children_created_total", "Jobs and TFJobs created.", ["kind"]
)
TRAINING_SECONDS: Final = Histogram(
    "kakehashi_training_duration_seconds",
    "From start to completion of finished runs, by outcome.",
    ["phase"],
    buckets=(1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
NOTIFICATIONS: Final = Counter(
    "kakehashi_notifications_total", "Run-ended notifications sent, by result.", ["result"]
)
# Per-ModelService state in kube-state-metrics' shape (kube_pod_status_condition and _phase):
# every condition x status and every phase is a series, 1 for the current one and 0 for the
# rest, so an alert compares values instead of depending on a series appearing. Scraped with
# honorLabels (manifests/monitoring), or Prometheus would rename `namespace` (the operator pod's
# own) to exported_namespace. Removed when the ModelService is deleted.
MODELSERVICE_CONDITION: Final = Gauge(
    "kakehashi_modelservice_status_condition",
    "A ModelService's status conditions (Ready, Deployed, Baked, ModelResolved): 1 for the status it has.",
    ["namespace", "name", "condition", "status"],
)
MODELSERVICE_PHASE: Final = Gauge(
    "kakehashi_modelservice_status_phase",
    "A ModelService's phase: 1 for the phase it is in.",
    ["namespace", "name", "phase"],
)
LEADER: Final = Gauge(
    "kakehashi_operator_leader",
    "1 while this replica reconciles (it holds the leader Lease, or runs without leader election), "
    "0 while it waits as standby.",
)

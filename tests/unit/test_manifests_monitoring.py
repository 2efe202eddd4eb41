"""manifests/monitoring: every alert's expression names only metrics (and labels) that the
operator and the inference server really export, so no alert is silently dead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kakehashi import metrics as operator_metrics
from kakehashi_inference.metrics import Metrics as InferenceMetrics

RULES = Path(__file__).resolve().parents[2] / "manifests" / "monitoring" / "prometheusrule.yaml"
# Prometheus's own per-target series.
PROMETHEUS = {"up": {"job", "instance"}}
# The issue's alerts: operator down, reconcile errors, training failure rate, inference p99 and
# error rate, a ModelService not Ready.
EXPECTED_ALERTS = {
    "KakehashiOperatorDown", "KakehashiReconcileErrors", "KakehashiTrainingFailureRate",
    "KakehashiInferenceLatencyP99", "KakehashiInferenceErrorRate", "KakehashiModelServiceNotReady",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset", "inf", "nan"}
_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def _series(collector: MetricWrapperBase) -> dict[str, set[str]]:
    """The sample names a collector exposes, each with its label names."""
    name, labels, kind = collector._name, set(collector._labelnames), collector._type
    if kind == "counter":
        return {f"{name}_total": labels}
    if kind == "histogram":
        return {f"{name}_bucket": labels | {"le"}, f"{name}_count": labels, f"{name}_sum": labels}
    if kind == "info":
        return {f"{name}_info": labels}
    return {name: labels}


def exported() -> dict[str, set[str]]:
    series: dict[str, set[str]] = dict(PROMETHEUS)
    inference = InferenceMetrics()
    for collector in [*vars(operator_metrics).values(), *vars(inference).values()]:
        if isinstance(collector, MetricWrapperBase):
            series.update(_series(collector))
    return series


def selectors(expr: str) -> dict[str, set[str]]:
    """Metric names in a PromQL expression, each with the label names its matchers use."""
    found: dict[str, set[str]] = {}
    for name, matchers in re.findall(rf"({_IDENT})\s*\{{([^}}]*)\}}", expr):
        found.setdefault(name, set()).update(re.findall(rf"({_IDENT})\s*(?:=~|!~|!=|=)", matchers))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for name in re.findall(rf"(?<![\w:.])({_IDENT})(?![\w:])(?!\s*\()", bare):
        if name.lower() not in KEYWORDS:
            found.setdefault(name, set())
    return found


def _alerts() -> list[dict[str, Any]]:
    rule = yaml.safe_load(RULES.read_text())
    assert rule["kind"] == "PrometheusRule"
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def test_the_parser_finds_metrics_and_matchers() -> None:
    expr = 'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{route="/x", code=~"5.."}[5m]))) > 0.5' \
           " and on (pod) b_total unless absent(c)"
    assert selectors(expr) == {"a_bucket": {"route", "code"}, "b_total": set(), "c": set()}


def test_every_alert_the_issue_names_is_there_with_severity_and_words() -> None:
    alerts = _alerts()
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    assert EXPECTED_ALERTS <= set(names)
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_expression_uses_only_exported_metrics_and_labels(alert: dict[str, Any]) -> None:
    series = exported()
    used = selectors(alert["expr"])
    assert used, f"{alert['alert']}: no metric in {alert['expr']!r}"
    for name, labels in used.items():
        assert name in series, f"{alert['alert']}: {name} is exported by neither the operator nor the server"
        assert labels <= series[name], f"{alert['alert']}: {name} has no label {sorted(labels - series[name])}"


def test_a_misspelt_metric_or_label_would_be_caught() -> None:
    series = exported()
    assert "kakehashi_reconcile_total" not in series  # the real one is kakehashi_reconciles_total
    assert "kakehashi_reconciles_total" in series
    assert "phase" not in series["kakehashi_reconciles_total"]
    assert "phase" in series["kakehashi_training_duration_seconds_count"]


def test_the_operators_own_namespace_label_survives_the_scrape() -> None:
    # Series the operator exports per object carry that object's `namespace`; a scrape without
    # honorLabels overwrites it with the operator pod's namespace (kakehashi-system) and the
    # ModelService alert would name the wrong service.
    labelled = [c for c in vars(operator_metrics).values()
                if isinstance(c, MetricWrapperBase) and "namespace" in c._labelnames]
    assert labelled, "the operator exports no per-object series"
    monitors = list(yaml.safe_load_all((RULES.parent / "podmonitors.yaml").read_text()))
    operator = next(m for m in monitors if m["metadata"]["name"] == "kakehashi-operator")
    assert all(e.get("honorLabels") is True for e in operator["spec"]["podMetricsEndpoints"])

"""The chart's monitoring objects: ServiceMonitor/PodMonitor, the PrometheusRule (which
promtool must accept) and the Grafana dashboard, all values-gated, and every PromQL
expression in them naming only metric families the platform exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from celeriac.platform import metrics
from celeriac.platform.queues import Pool

from deploy_support import REPO

CHART = REPO / "helm" / "celeriac"
# As tests/deploy/test_helm.py renders it (a test module cannot import another here).
BASE_VALUES: dict[str, Any] = {
    "secrets": {"existingSecret": "celeriac-env"},
    "config": {"blob": {"s3Bucket": "celeriac-blobs"}},
}


def _merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(
            _merged(BASE_VALUES, values or {}),
            name="celeriac",
            namespace="celeriac",
            is_install=True,
        )
    return [
        doc
        for name, text in sorted(manifests.items())
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


ALL_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "datadog": {"enabled": True},
    }
}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

# PromQL words that are not metric names.
_FUNCTIONS_AND_KEYWORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "absent",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "delta",
}


def exported_series() -> set[str]:
    """Every sample name a scrape of a Celeriac process can contain."""
    names = set(metrics.COLLECTED_FAMILIES)
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names |= {f"{value._name}_total", f"{value._name}_created"}
        elif isinstance(value, Histogram):
            names |= {f"{value._name}_{s}" for s in ("bucket", "count", "sum", "created")}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping labels,
    strings, durations and function names removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        after = text[match.end() :].lstrip()
        if word in _FUNCTIONS_AND_KEYWORDS or after.startswith("("):
            continue
        found.add(word)
    return found


def _rule_expressions(objects: list[dict[str, Any]]) -> list[str]:
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    return [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (config,) = [o for o in objects if o["metadata"]["name"].endswith("-dashboard")]
    dashboard: dict[str, Any] = json.loads(config["data"]["celeriac.json"])
    return dashboard


def test_monitoring_objects_are_off_unless_asked_for() -> None:
    kinds = {o["kind"] for o in render()}
    assert not kinds & MONITORING_KINDS
    assert not [o for o in render() if o["metadata"]["name"].endswith("-dashboard")]
    on = render(ALL_ON)
    monitors = [o for o in on if o["kind"] == "PodMonitor"]
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in monitors} == {
        "beat",
        *(f"worker-{p.value}" for p in Pool),
    }
    (service_monitor,) = [o for o in on if o["kind"] == "ServiceMonitor"]
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_every_worker_and_beat_exposes_the_metrics_port_it_is_told() -> None:
    for obj in render(ALL_ON):
        if obj["kind"] != "Deployment" or obj["metadata"]["name"].endswith("-api"):
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        (check,) = [v for k, v in annotations.items() if k.startswith("ad.datadoghq.com/")]
        endpoint = json.loads(check)["openmetrics"]["instances"][0]["openmetrics_endpoint"]
        assert endpoint == "http://%%host%%:9100/metrics"
    (config,) = [o for o in render() if o["kind"] == "ConfigMap"]
    assert config["data"]["CELERIAC_OBSERVABILITY__METRICS_PORT"] == "9100"
    (off,) = [o for o in render({"metrics": {"enabled": False}}) if o["kind"] == "ConfigMap"]
    assert off["data"]["CELERIAC_OBSERVABILITY__METRICS_ENABLED"] == "false"


def test_the_name_check_catches_a_misspelt_family() -> None:
    expression = 'sum by (pool) (rate(celeriac_taks_total{outcome="failed"}[5m])) > 0'
    assert metric_names(expression) == {"celeriac_taks_total"}
    assert not metric_names(expression) <= exported_series()


def test_every_promql_expression_names_only_exported_families() -> None:
    objects = render(ALL_ON)
    expressions = _rule_expressions(objects)
    expressions += [t["expr"] for p in _dashboard(objects)["panels"] for t in p["targets"]]
    assert len(expressions) >= 20
    exported = exported_series()
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= exported, (expression, names - exported)


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    titles = " / ".join(p["title"] for p in _dashboard(render(ALL_ON))["panels"])
    for needed in (
        "Jobs finished by state",
        "Job duration p50",
        "Job duration p95",
        "Backlog per pool",
        "Oldest waiting task",
        "by plugin",
        "Webhook attempts",
        "API latency",
    ):
        assert needed in titles


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (make installs it)"
    (rule,) = [o for o in render(ALL_ON) if o["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


@pytest.mark.parametrize(
    "alert",
    [
        "CeleriacBacklogOld",
        "CeleriacNoFreeSlots",
        "CeleriacPoolWithoutWorkers",
        "CeleriacJobFailureRatio",
        "CeleriacWebhookFailureRatio",
        "CeleriacQuotaRejectionsSpike",
    ],
)
def test_each_alert_the_issue_names_is_there(alert: str) -> None:
    (rule,) = [o for o in render(ALL_ON) if o["kind"] == "PrometheusRule"]
    assert alert in {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}

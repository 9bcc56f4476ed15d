"""Metrics deployment: the Prometheus scrape configuration and the Grafana dashboard match the workers' metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path

from deployment import DEPLOY, as_argv, container, objects, option_value, yaml_docs
from deployment import compose, k8s, services  # noqa: F401 (fixtures; services needs compose)


# -- metrics: Prometheus scrape configuration, Grafana dashboard ---------------------------
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "specq.json"
# The samples a metric family of each type exposes (prometheus_client's naming).
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count",
                                                                                    "_created")}


def specq_families() -> dict[str, str]:
    """The worker's metric families (workers/metrics.py's registry and the lane gauges): name → type."""
    import tempfile

    from prometheus_client import REGISTRY

    import workers.metrics  # noqa: F401  (registers the metrics)
    from tasks.brokers import LaneGauges
    from workers.settings import load_settings

    families = list(REGISTRY.collect())
    with tempfile.TemporaryDirectory() as state:  # the lane gauges of an empty embedded broker
        families += list(LaneGauges(load_settings(state_dir=Path(state)), ["gpu"]).collect())
    return {family.name: family.type for family in families if family.name.startswith("specq_")}


def specq_sample_names() -> set[str]:
    """Every sample name the worker's metrics expose."""
    return {name + suffix for name, kind in specq_families().items() for suffix in SAMPLE_SUFFIXES[kind]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_dashboard_uses_only_metric_names_the_workers_expose():
    exposed = specq_sample_names()
    assert {"specq_spectra_total", "specq_stage_seconds_bucket", "specq_queue_wait_seconds_bucket",
            "specq_batch_spectra_bucket", "specq_worker_up", "specq_worker_busy",
            "specq_device_memory_bytes"} <= exposed
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\bspecq_[a-z_]+", expr)}
    assert used and used <= exposed, used - exposed
    for family, kind in specq_families().items():  # every metric of the workers is on the dashboard
        assert used & {family + suffix for suffix in SAMPLE_SUFFIXES[kind]}, family


def test_dashboard_labels_exist_on_the_metrics():
    from workers import metrics

    labels = {"pipeline", "outcome", "stage", "device", "kind", "le", "instance", "queue", "lane"}
    used = {label for expr in dashboard_exprs() for group in re.findall(r"by \(([^)]*)\)", expr)
            for label in (x.strip() for x in group.split(","))}
    used |= {label for expr in dashboard_exprs() for label in re.findall(r"\{(\w+)=", expr)}
    assert used <= labels, used - labels
    assert set(metrics.SPECTRA._labelnames) == {"pipeline", "outcome"}
    assert set(metrics.STAGE_SECONDS._labelnames) == {"pipeline", "stage"}
    assert set(re.findall(r'outcome="(\w+)"', " ".join(dashboard_exprs()))) <= set(metrics.OUTCOMES)


def test_prometheus_scrapes_the_configured_metrics_port(services, k8s):
    config = yaml_docs(PROMETHEUS)[0]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    port = int(services["worker-gpu"]["environment"]["SPECQ_METRICS_PORT"])
    assert int(objects(k8s, "ConfigMap")["specq-config"]["data"]["SPECQ_METRICS_PORT"]) == port
    targets = [t for group in jobs["specq-compose"]["static_configs"] for t in group["targets"]]
    assert f"worker-gpu:{port}" in targets
    concurrency = int(re.search(r"\d+", option_value(as_argv(services["worker-cpu"]["command"]),
                                                      "--concurrency")).group())
    assert {f"worker-cpu:{port + i}" for i in range(concurrency)} <= set(targets)  # a port per prefork child
    # Kubernetes: annotated pods, one container port per process that serves.
    relabel = jobs["specq-k8s"]["relabel_configs"]
    port_rule = next(r for r in relabel if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"])
    for name in ("specq-worker-gpu", "specq-worker-cpu"):
        deploy = objects(k8s, "Deployment")[name]
        assert deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        c = container(deploy)
        ports = [p for p in c["ports"] if re.fullmatch(port_rule["regex"], p["name"])]
        children = int(option_value(c["args"], "--concurrency") or 1)
        assert sorted(p["containerPort"] for p in ports) == [port + i for i in range(children)], name

"""The monitoring and otel profiles' files under deploy/compose, checked against compose.yaml and the code:
Prometheus scrapes every nimrag service where it listens, on a path its app serves; every metric the Grafana
dashboard queries is one the services export; the collector receives where the services send their spans."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy import service_facts as facts
from tests.deploy.compose_cli import answering, config, nimrag_services, url_host_port

COMPOSE_DIR = REPO / "deploy/compose"
DASHBOARD = COMPOSE_DIR / "grafana/dashboards/nimrag.json"
# PromQL words that are not metric names
PROMQL = {"sum", "rate", "histogram_quantile", "avg", "max", "min", "count", "irate", "increase"}


def _yaml(relative: str) -> dict:
    return yaml.safe_load((COMPOSE_DIR / relative).read_text())


def _mount_of(service: dict, relative: str) -> str:
    return next(v["target"] for v in service["volumes"] if v["type"] == "bind"
                and v["source"] == str(COMPOSE_DIR / relative))


def test_prometheus_scrapes_every_nimrag_service_where_it_listens(tmp_path):
    project = config("cpu", "monitoring")
    prometheus = project["services"]["prometheus"]
    assert _mount_of(prometheus, "prometheus.yml") == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    key_file = {c["target"] for c in prometheus["configs"]}
    jobs = _yaml("prometheus.yml")["scrape_configs"]
    scraped = {}
    for job in jobs:
        assert job["authorization"]["credentials_file"] in key_file, job["job_name"]
        for target in (t for static in job["static_configs"] for t in static["targets"]):
            host, port = url_host_port(target)
            [name] = answering(project, host)
            service = nimrag_services(project)[name]
            assert port == facts.default_port(service)
            path = job["metrics_path"]
            assert facts.get_statuses(service, tmp_path / job["job_name"], [path]) == {path: 200}, job["job_name"]
            scraped[job["job_name"]] = service
    assert scraped == {s: s for s in facts.SERVICES}  # one job per service, named after it
    # the GPU platform's services answer to the same names
    gpu = config("gpu", "monitoring")
    assert {nimrag_services(gpu)[answering(gpu, url_host_port(t)[0])[0]] for j in jobs
            for s in j["static_configs"] for t in s["targets"]} == set(facts.SERVICES)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its words once label matchers, ranges, strings and the
    by/without clauses are gone, less the functions and numbers."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\b(?:by|without)\s*\([^)]*\)", " ", expr)
    return {w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare) if w not in PROMQL}


def test_every_dashboard_query_reads_exported_metrics(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(expressions) > 20
    queried = set().union(*map(metric_names, expressions))
    exported = set().union(*(facts.exported_series(s, tmp_path / s) for s in facts.SERVICES))
    assert queried - exported == set()
    assert {"nimrag_requests_total", "time_to_first_token_seconds_bucket", "nimrag_rag_stage_seconds_bucket"} <= queried
    assert metric_names('sum by (job, le) (rate(x_bucket{job="a"}[5m]))') == {"x_bucket"}


def test_dashboard_reads_the_provisioned_datasource():
    datasource = _yaml("grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert url_host_port(datasource["url"]) == ("prometheus", 9090)
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    provider = _yaml("grafana/provisioning/dashboards/nimrag.yaml")["providers"][0]
    grafana = config("monitoring")["services"]["grafana"]
    assert _mount_of(grafana, "grafana/dashboards") == provider["options"]["path"]
    assert _mount_of(grafana, "grafana/provisioning") == "/etc/grafana/provisioning"


@pytest.mark.parametrize("protocol,port", [("http", 4318), ("grpc", 4317)])
def test_the_collector_receives_where_the_services_send(protocol, port):
    collector = _yaml("otel-collector.yaml")
    assert collector["receivers"]["otlp"]["protocols"][protocol]["endpoint"] == f"0.0.0.0:{port}"
    project = config("cpu", "otel", OTEL_TRACES_EXPORTER="otlp")
    endpoints = {url_host_port(project["services"][n]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
                 for n in nimrag_services(project)}
    assert endpoints == {("otel-collector", 4318)}  # OTLP over HTTP: the exporter the services have
    service = project["services"]["otel-collector"]
    config_path = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config="))
    assert _mount_of(service, "otel-collector.yaml") == config_path


def test_the_collector_passes_traces_to_jaeger():
    collector = _yaml("otel-collector.yaml")
    traces = collector["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and set(traces["exporters"]) <= set(collector["exporters"])
    host, port = url_host_port(collector["exporters"]["otlp/jaeger"]["endpoint"])
    assert answering(config("otel"), host) == ["jaeger"] and port == 4317

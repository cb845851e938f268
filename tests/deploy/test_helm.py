"""The Helm chart deploy/helm/nimrag, checked statically (no cluster here): linted and rendered by Helm v4's own Go
code (helm-python-sdk), for its default values and each values-*.yaml beside them; every manifest validated in
strict mode against the newest Kubernetes schemas kubernetes-validate ships. The containers get settings their
service reads (loaded with the services' own settings classes), listen on the services' default ports, and are
probed on paths the real apps answer; the API keys reach every service; more than one pipeline replica renders
only with shared stores."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.conftest import REPO
from tests.deploy import service_facts as facts

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (the dev extra declares it)
    import tomli as tomllib

CHART = REPO / "deploy" / "helm" / "nimrag"
VALUES_FILES = ["values.yaml", *sorted(p.name for p in CHART.glob("values-*.yaml"))]
KUBE_VERSION = latest_version()  # the newest schemas it ships (1.37.0 with kubernetes-validate 1.37.0)
# Kinds kubernetes-validate has no schema for (CRDs), skipped there on purpose and checked by
# test_service_monitor_scrapes_every_service instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
MODEL_SERVICES = [name for name, entry in facts.SERVICES.items() if entry.profiles]
SECRET_PLACEHOLDER = "secret-from-a-secret"


# --- rendering -------------------------------------------------------------------------------------------------

def values_of(values_file: str) -> dict | None:
    """What `helm install -f FILE` passes over values.yaml; None for the defaults alone."""
    return None if values_file == "values.yaml" else yaml.safe_load((CHART / values_file).read_text())


def render(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="nimrag", namespace="nimrag")
    return [doc for path, text in sorted(manifests.items()) if path.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text) if doc]


@cache
def rendered(values_file: str) -> tuple[dict, ...]:
    return tuple(render(values_of(values_file)))


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def deployments(docs) -> dict[str, dict]:
    return {component(d): d for d in of_kind(docs, "Deployment")}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def served_service(c: dict) -> str:
    """The service a container runs: `nimrag serve <service> --host 0.0.0.0 --port <port>`."""
    assert c["command"][:2] == ["nimrag", "serve"], c["command"]
    return c["command"][2]


def env_of(c: dict, secrets: dict[str, dict] | None = None) -> dict[str, str]:
    """The container's environment; a Secret's value where `secrets` holds it, else a placeholder."""
    env = {}
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            data = (secrets or {}).get(ref["name"], {})
            if ref["key"] in data:
                env[entry["name"]] = data[ref["key"]]
            elif not ref.get("optional"):
                env[entry["name"]] = (f"redis://{SECRET_PLACEHOLDER}:6379/0" if entry["name"].endswith("_REDIS_URL")
                                      else SECRET_PLACEHOLDER)
    return env


def secrets_of(docs) -> dict[str, dict]:
    return {s["metadata"]["name"]: s.get("stringData", {}) for s in of_kind(docs, "Secret")}


# --- the chart as Helm sees it ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lint_is_clean(values_file):
    report = helm.lint(CHART, values_of(values_file))
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]  # no warning or error


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_manifest_validates_against_kubernetes_schemas(values_file):
    docs = rendered(values_file)
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue  # a CRD: no schema in kubernetes-validate
        try:  # an unknown kind or apiVersion raises SchemaNotFoundError: that fails too
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {'.'.join(map(str, e.path))}: {e.message}")
        checked += 1
    assert checked >= 2 * len(facts.SERVICES) + 2  # Deployments, Services, the Secret or ServiceAccount at least


def test_schemas_are_a_current_kubernetes():
    major, minor = map(int, KUBE_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 33), KUBE_VERSION


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_one_deployment_and_service_per_service(values_file):
    docs = rendered(values_file)
    assert set(deployments(docs)) == set(facts.SERVICES)
    services = {component(s): s for s in of_kind(docs, "Service")}
    assert set(services) == set(facts.SERVICES)
    for name, deployment in deployments(docs).items():
        pod = deployment["spec"]["template"]
        assert services[name]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"] == services[name]["spec"]["selector"]
        (port,) = services[name]["spec"]["ports"]
        (container_port,) = container(deployment)["ports"]
        assert (port["targetPort"], port["port"]) == (container_port["name"], container_port["containerPort"])


# --- the containers against the code ---------------------------------------------------------------------------

@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_containers_run_their_service_on_its_default_port(values_file):
    for name, deployment in deployments(rendered(values_file)).items():
        c = container(deployment)
        assert served_service(c) == name
        port = facts.default_port(name)
        assert c["command"] == ["nimrag", "serve", name, "--host", "0.0.0.0", "--port", str(port)]
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_env_var_is_a_setting_of_its_service(values_file):
    for name, deployment in deployments(rendered(values_file)).items():
        names = [entry["name"] for entry in container(deployment).get("env", [])]
        assert len(names) == len(set(names)), f"{name}: an env var twice"
        assert facts.unknown_env(name, names) == [], f"{name} reads no such setting"


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_each_container_environment_loads_as_its_settings(values_file):
    docs = rendered(values_file)
    for name, deployment in deployments(docs).items():
        c = container(deployment)
        env = env_of(c, secrets_of(docs))
        settings = facts.settings_from_env(name, env)  # a ValidationError fails the test
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        if name == "pipeline":
            assert str(settings.data_path) in mounts
            if settings.guardrails_path:
                assert mounts[str(settings.guardrails_path)].get("readOnly", False) == settings.guardrails_read_only
        else:
            assert str(settings.cache_path) in mounts  # NIM_CACHE_PATH: writable on a read-only root


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_pipeline_calls_the_charts_model_services(values_file):
    docs = rendered(values_file)
    services = {component(s): s for s in of_kind(docs, "Service")}
    pipeline = facts.settings_from_env("pipeline", env_of(container(deployments(docs)["pipeline"])))
    for model in MODEL_SERVICES:
        url = urlsplit(getattr(pipeline, f"{model}_url"))
        service = services[model]
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "http", service["metadata"]["name"], service["spec"]["ports"][0]["port"], "/v1")


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_probes_are_paths_the_apps_answer(values_file, tmp_path):
    for name, deployment in deployments(rendered(values_file)).items():
        c = container(deployment)
        probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"]["path"] == "/v1/health/live"
        assert probes["readinessProbe"]["path"] == "/v1/health/ready"
        statuses = facts.get_statuses(name, tmp_path / name, {probe["path"] for probe in probes.values()})
        for kind, probe in probes.items():
            assert probe["port"] == "http"
            status = statuses[probe["path"]]
            # live: 200 once the server runs; ready: 503 until the model is loaded (the pipeline loads none)
            assert status == 200 or (kind == "readinessProbe" and status == 503), (name, kind, status)


@pytest.mark.parametrize("values_file", [f for f in VALUES_FILES if any(
    d["kind"] == "ServiceMonitor" for d in rendered(f))])
def test_service_monitor_scrapes_every_service(values_file, tmp_path):
    docs = rendered(values_file)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["nimrag"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/v1/metrics"
    for service in of_kind(docs, "Service"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    for name in facts.SERVICES:
        assert facts.get_statuses(name, tmp_path / name, [endpoint["path"]]) == {endpoint["path"]: 200}, name


# --- keys, images, GPUs, security ------------------------------------------------------------------------------

def test_api_keys_reach_every_service():
    keys = {"clientKeys": ["client-1", "client-2"], "serviceKey": "svc", "adminKey": "adm", "metricsKey": "prom"}
    docs = render({"apiKeys": keys, "metrics": {"serviceMonitor": {"enabled": True}}})
    secrets = secrets_of(docs)
    settings = {name: facts.settings_from_env(name, env_of(container(d), secrets))
                for name, d in deployments(docs).items()}
    pipeline = settings.pop("pipeline")
    assert pipeline.api_key_list == ["client-1", "client-2", "prom"]
    assert (pipeline.service_api_key, pipeline.admin_api_key) == ("svc", "adm")
    for name, model_settings in settings.items():
        assert set(model_settings.api_key_list) == {"client-1", "client-2", "prom", pipeline.service_api_key}, name
    (monitor,) = of_kind(docs, "ServiceMonitor")
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert secrets[credentials["name"]][credentials["key"]] == "prom"


def test_an_existing_secret_replaces_the_charts():
    docs = render({"apiKeys": {"existingSecret": "my-keys"}})
    assert of_kind(docs, "Secret") == []
    for name, deployment in deployments(docs).items():
        refs = [e["valueFrom"]["secretKeyRef"] for e in container(deployment)["env"] if "valueFrom" in e]
        assert refs and all(ref["name"] == "my-keys" for ref in refs), name


def chart_app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_images_and_gpus(values_file):
    project_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart_app_version() == project_version
    for name, deployment in deployments(rendered(values_file)).items():
        c = container(deployment)
        gpu = (values_of(values_file) or {}).get(name, {}).get("gpu", {}).get("enabled", False)
        assert c["image"] == f"nimrag/{name}{'-cuda' if gpu else ''}:{project_version}"
        limits = c.get("resources", {}).get("limits", {})
        assert ("nvidia.com/gpu" in limits) == gpu, name


def test_gpu_values_ask_for_gpus_and_tolerate_gpu_nodes():
    docs = rendered("values-gpu-milvus-triton.yaml")
    gpu_pods = [d for d in deployments(docs).values() if "nvidia.com/gpu" in container(d)["resources"]["limits"]]
    assert gpu_pods
    for deployment in gpu_pods:
        assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 1
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_containers_run_as_non_root_on_a_read_only_root(values_file):
    for name, deployment in deployments(rendered(values_file)).items():
        pod = deployment["spec"]["template"]["spec"]
        context = container(deployment)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0, name
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], name
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"/tmp", "/home/nim/.cache"} <= {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert pod["automountServiceAccountToken"] is False


def test_settings_values_become_env_vars():
    docs = render({"embed": {"settings": {"MAX_INPUTS": 1000000, "JSON_LOGS": False}}})
    env = env_of(container(deployments(docs)["embed"]))
    assert (env["NIMRAG_EMBED_MAX_INPUTS"], env["NIMRAG_EMBED_JSON_LOGS"]) == ("1000000", "false")  # not 1e+06
    settings = facts.settings_from_env("embed", env)
    assert (settings.max_inputs, settings.json_logs) == (1000000, False)


def test_a_setting_the_chart_sets_itself_is_refused():
    with pytest.raises(helm.HelmRenderError, match="pipeline.settings.VECTOR_STORE: the chart sets "
                                                   "NIMRAG_PIPELINE_VECTOR_STORE"):
        render({"pipeline": {"settings": {"VECTOR_STORE": "milvus"}}})


def test_triton_urls_select_the_triton_profiles():
    docs = rendered("values-gpu-milvus-triton.yaml")
    llm = facts.settings_from_env("llm", env_of(container(deployments(docs)["llm"])))
    assert llm.triton_url and llm.triton_model == "ensemble"


# --- pipeline replicas and state -------------------------------------------------------------------------------

SHARED_STORES = {"vectorStore": "milvus", "milvus": {"uri": "http://milvus:19530"},
                 "taskStore": "redis", "redis": {"url": "redis://redis:6379/0"}}


@pytest.mark.parametrize("pipeline,named,not_named", [
    ({"replicaCount": 2}, ["pipeline.replicaCount=2", "vectorStore=faiss", "taskStore=sqlite"], []),
    ({"autoscaling": {"enabled": True}}, ["pipeline.autoscaling.enabled=true", "vectorStore=faiss"], []),
    ({**SHARED_STORES, "replicaCount": 3, "taskStore": "sqlite"}, ["taskStore=sqlite"], ["vectorStore"]),
    ({**SHARED_STORES, "replicaCount": 2, "milvus": {"uri": "/data/milvus.db"}}, ["Milvus Lite"], ["taskStore"]),
    ({**SHARED_STORES, "replicaCount": 2, "milvus": {"uri": ""}}, ["Milvus Lite"], ["taskStore"]),
])
def test_pipeline_replicas_need_shared_stores(pipeline, named, not_named):
    with pytest.raises(helm.HelmRenderError) as failure:
        render({"pipeline": pipeline})
    message = str(failure.value)
    assert "needs stores that every pipeline replica shares" in message
    reasons = message.split(", but ")[1].split(". Set ")[0]
    assert all(part in message for part in named), message
    assert not any(part in reasons for part in not_named), message


def test_pipeline_replicas_on_milvus_and_redis():
    docs = render({"pipeline": {**SHARED_STORES, "replicaCount": 2}})
    deployment = deployments(docs)["pipeline"]
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # rolling updates: no files two processes would share
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}  # only logs there
    assert not [p for p in of_kind(docs, "PersistentVolumeClaim") if component(p) == "pipeline"]
    settings = facts.settings_from_env("pipeline", env_of(container(deployment)))
    assert (settings.vector_store, settings.milvus_uri) == ("milvus", "http://milvus:19530")
    assert (settings.task_store, settings.redis_url) == ("redis", "redis://redis:6379/0")


def test_the_scale_out_values_run_replicas_with_an_autoscaler():
    docs = rendered("values-gpu-milvus-triton.yaml")
    (hpa,) = [h for h in of_kind(docs, "HorizontalPodAutoscaler") if component(h) == "pipeline"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployments(docs)["pipeline"]["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 2
    assert "replicas" not in deployments(docs)["pipeline"]["spec"]  # the autoscaler owns the count


def test_local_state_lives_in_a_volume():
    docs = rendered("values.yaml")
    deployment = deployments(docs)["pipeline"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claims = {p["metadata"]["name"]: p for p in of_kind(docs, "PersistentVolumeClaim")}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] in claims
    settings = facts.settings_from_env("pipeline", env_of(container(deployment)))
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == "data")
    assert Path(mount["mountPath"]) == settings.data_path
    for name in ("embed", "rerank"):
        model_volumes = {v["name"]: v for v in deployments(docs)[name]["spec"]["template"]["spec"]["volumes"]}
        assert model_volumes["model-cache"]["persistentVolumeClaim"]["claimName"] in claims


def test_autoscaling_needs_the_requests_it_scales_on():
    with pytest.raises(helm.HelmRenderError, match="embed.autoscaling scales on CPU utilization"):
        render({"embed": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}})


def test_a_model_service_run_elsewhere_needs_its_url():
    with pytest.raises(helm.HelmRenderError, match="rerank.enabled=false: give the pipeline its URL"):
        render({"rerank": {"enabled": False}})
    docs = render({"rerank": {"enabled": False}, "pipeline": {"urls": {"rerank": "http://ranker:9000/v1"}}})
    assert set(deployments(docs)) == set(facts.SERVICES) - {"rerank"}
    pipeline = facts.settings_from_env("pipeline", env_of(container(deployments(docs)["pipeline"])))
    assert pipeline.rerank_url == "http://ranker:9000/v1"

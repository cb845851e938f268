"""compose.yaml through the real Compose binary's ``config`` (no Docker engine here: nothing is built or started),
checked against the code: every profile loads, the pipeline reaches the model services of the platform it runs
with, every variable is a setting its service reads and validates, ports are the services' own, health checks
ask paths the apps serve, and nothing mounts a host path the repository lacks."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import REPO
from tests.deploy import service_facts as facts
from tests.deploy.compose_cli import (
    ADD_ONS,
    PLATFORMS,
    answering,
    config,
    nimrag_services,
    reserves_gpus,
    run_compose,
    url_host_port,
)

PROFILE_SETS = [(), *((p,) for p in (*PLATFORMS, *ADD_ONS)), *itertools.product(PLATFORMS, ADD_ONS),
                ("gpu", *ADD_ONS), ("cpu", *ADD_ONS)]
EVERYTHING = ("cpu", "gpu", *ADD_ONS)  # every service at once (cpu and gpu together would not start: same ports)
MODEL_URLS = {"embed": "NIMRAG_PIPELINE_EMBED_URL", "rerank": "NIMRAG_PIPELINE_RERANK_URL",
              "llm": "NIMRAG_PIPELINE_LLM_URL"}


@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p) or "default")
def test_compose_accepts_every_profile(profiles):
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    done = run_compose(*flags, "config", "--quiet")
    assert done.returncode == 0, done.stderr
    assert config(*profiles)["services"], "no service selected"


def test_the_default_is_the_cpu_platform():
    project = config()
    assert set(project["services"]) == {"embed", "rerank", "llm", "pipeline"}
    assert not any(reserves_gpus(svc) for svc in project["services"].values())
    assert config() == config("cpu")


def test_each_add_on_profile_adds_its_own_services():
    platform = set(config("cpu")["services"])
    for add_on in ADD_ONS:
        alone = set(config(add_on)["services"])
        assert alone and not alone & platform, add_on  # the add-ons never start a second platform
        assert set(config("cpu", add_on)["services"]) == platform | alone


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_pipeline_reaches_the_model_services_of_its_platform(platform):
    project = config(platform)
    services = project["services"]
    env = services["pipeline"]["environment"]
    for model, variable in MODEL_URLS.items():
        host, port = url_host_port(env[variable])
        targets = answering(project, host)
        assert len(targets) == 1, f"{variable}: {host} answers as {targets or 'nothing'} with --profile {platform}"
        target = services[targets[0]]
        assert nimrag_services(project)[targets[0]] == model
        assert port == facts.default_port(model)
        assert reserves_gpus(target) == (platform == "gpu"), targets[0]
        assert target["build"]["args"].get("VARIANT", "cpu") == platform
        assert services["pipeline"]["depends_on"][targets[0]]["condition"] == "service_healthy"


def test_gpu_variants_stand_in_for_the_cpu_services():
    cpu, gpu = config("cpu")["services"], config("gpu")["services"]
    for model in MODEL_URLS:
        variant = gpu[f"{model}-gpu"]
        assert model in variant["networks"]["default"]["aliases"]
        # the same host ports: cpu and gpu together fail to bind instead of splitting the traffic
        assert variant["ports"] == cpu[model]["ports"]
        assert set(variant["environment"]) >= set(cpu[model]["environment"])  # keys, models, tracing alike


def test_every_variable_is_a_setting_its_service_reads_and_accepts():
    checked = 0
    for env in ({}, {"NIMRAG_API_KEYS": "k1,k2", "NIMRAG_SERVICE_API_KEY": "s", "OTEL_TRACES_EXPORTER": "otlp",
                     "NIMRAG_PIPELINE_VECTOR_STORE": "milvus", "NIMRAG_PIPELINE_TASK_STORE": "redis",
                     "NIMRAG_LLM_TRITON_URL": "triton:8001"}):
        project = config(*EVERYTHING, **env)
        for name, service in nimrag_services(project).items():
            variables = project["services"][name]["environment"]
            assert facts.unknown_env(service, variables) == [], name
            facts.settings_from_env(service, variables)  # raises where a value does not validate
            facts.check_tracing_env(variables)
            checked += 1
    assert checked == 14


def test_keys_reach_every_nimrag_service():
    project = config(*EVERYTHING, NIMRAG_API_KEYS="k1,k2", NIMRAG_SERVICE_API_KEY="s")
    for name, service in nimrag_services(project).items():
        settings = facts.settings_from_env(service, project["services"][name]["environment"])
        assert set(settings.api_key_list) == {"k1", "k2", "s"}, name  # callers' keys, and the service key
    pipeline = facts.settings_from_env("pipeline", project["services"]["pipeline"]["environment"])
    assert pipeline.service_api_key == "s"
    unset = config(*EVERYTHING)
    for name, service in nimrag_services(unset).items():
        assert facts.settings_from_env(service, unset["services"][name]["environment"]).api_key_list == [], name


def test_ports_are_the_services_own_and_on_loopback():
    project = config(*EVERYTHING)
    for name, service in nimrag_services(project).items():
        svc = project["services"][name]
        port = facts.default_port(service)
        assert int(svc["build"]["args"]["PORT"]) == port, name
        assert [(p["target"], int(p["published"]), p["host_ip"]) for p in svc["ports"]] == [(port, port, "127.0.0.1")]
    for name, svc in project["services"].items():  # nothing else is published beyond this host either
        assert all(p.get("host_ip") == "127.0.0.1" for p in svc.get("ports", [])), name


def test_every_nimrag_service_and_variant_is_in_compose():
    assert set(nimrag_services(config("cpu")).values()) == set(facts.SERVICES)
    assert set(nimrag_services(config("gpu")).values()) == set(facts.SERVICES)
    built = config(*EVERYTHING)["services"]
    assert {n for n, s in nimrag_services(config(*EVERYTHING)).items() if built[n]["build"]["args"].get("VARIANT")
            == "gpu"} == {"embed-gpu", "rerank-gpu", "llm-gpu"}


def test_health_checks_ask_paths_the_apps_serve(tmp_path):
    project = config(*EVERYTHING)
    for name, service in nimrag_services(project).items():
        test = " ".join(project["services"][name]["healthcheck"]["test"])
        paths = [p.partition("'")[0] for p in test.split("127.0.0.1:%s")[1:]]
        assert paths == ["/v1/health/ready"], name
        # 503 until the model is loaded (never here), then 200: healthy once it can serve
        assert set(facts.get_statuses(service, tmp_path / name, paths).values()) <= {200, 503}, name
        assert "NIMRAG_SERVICE_PORT" in test  # set by the image from its PORT build argument


def test_milvus_profile_serves_the_pipelines_stores():
    project = config("cpu", "milvus", NIMRAG_PIPELINE_VECTOR_STORE="milvus", NIMRAG_PIPELINE_TASK_STORE="redis")
    services = project["services"]
    settings = facts.settings_from_env("pipeline", services["pipeline"]["environment"])
    assert (settings.vector_store, settings.task_store) == ("milvus", "redis")
    for url, port in ((settings.milvus_uri, 19530), (settings.redis_url, 6379)):
        host, url_port = url_host_port(url)
        assert answering(project, host) == [host] and url_port == port
        assert services["pipeline"]["depends_on"][host]["condition"] == "service_healthy"
        assert services[host]["healthcheck"]["test"]
    assert {"etcd", "minio"} <= set(services["milvus"]["depends_on"])
    # unset, the pipeline keeps FAISS and SQLite: the profile alone only starts the servers
    default = facts.settings_from_env("pipeline", config("cpu", "milvus")["services"]["pipeline"]["environment"])
    assert (default.vector_store, default.task_store) == ("faiss", "sqlite")


def test_triton_profile_serves_the_llm_gateway():
    project = config("gpu", "triton", NIMRAG_LLM_TRITON_URL="triton:8001")
    services = project["services"]
    llm = facts.settings_from_env("llm", services["llm-gpu"]["environment"])
    host, port = url_host_port(llm.triton_url)
    assert answering(project, host) == ["triton"] and port == 8001  # Triton's gRPC port
    triton = services["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-trtllm-python-py3")
    repository = next(a.split("=", 1)[1] for a in triton["command"] if a.startswith("--model-repository="))
    assert any(v["target"] == repository and v["type"] == "volume" for v in triton["volumes"])
    assert reserves_gpus(triton)
    assert "triton" in services["llm-gpu"]["depends_on"]


def test_otel_profile_receives_every_services_traces():
    project = config("cpu", "otel", OTEL_TRACES_EXPORTER="otlp")
    for name in nimrag_services(project):
        env = project["services"][name]["environment"]
        assert facts.check_tracing_env(env) == ["otlp"], name
        host, port = url_host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert answering(project, host) == ["otel-collector"] and port == 4318, name
    assert all(facts.check_tracing_env(config("cpu")["services"][n]["environment"]) == [] for n in facts.SERVICES)


def _host_sources(project: dict) -> list[str]:
    binds = [v["source"] for svc in project["services"].values() for v in svc.get("volumes", [])
             if v["type"] == "bind"]
    return binds + [c["file"] for c in project.get("configs", {}).values() if "file" in c]


def test_nothing_mounts_a_host_path_the_repository_lacks():
    sources = _host_sources(config(*EVERYTHING))
    assert sources, "the monitoring and otel profiles mount their config files"
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        assert path.resolve().is_relative_to(REPO / "deploy"), f"{source}: mount only files committed under deploy/"


def test_named_volumes_are_declared():
    project = config(*EVERYTHING)
    used = {v["source"] for svc in project["services"].values() for v in svc.get("volumes", [])
            if v["type"] == "volume"}
    assert used == set(project["volumes"])
    pipeline = {v["target"]: v["source"] for v in project["services"]["pipeline"]["volumes"]}
    data_path = facts.settings_from_env("pipeline", project["services"]["pipeline"]["environment"]).data_path
    assert pipeline[str(data_path)] == "nim-data"  # the pipeline's state outlives its container

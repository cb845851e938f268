"""What each nimrag service accepts, read from the code, for tests of deployment files (compose.yaml, a Helm chart).

A service is named as ``nimrag serve`` names it (``embed``, ``rerank``, ``llm``, ``pipeline``: ``SERVICES``). Nothing
here knows any deployment format: a test turns its file into environment mappings, ports and paths, then asks.

- :func:`accepted_env` / :func:`unknown_env`: the environment variables a deployment may give a service (its
  settings' prefixed names, the NIM names of its fields, the ``OTEL_*`` names of the tracing), spelled exactly.
- :func:`settings_from_env`: the service's settings as it would build them at start from an environment (raises
  pydantic's ValidationError where a value does not validate); :func:`check_tracing_env` does the same for tracing.
- :func:`default_port`: the port a service listens on unless told otherwise.
- :func:`get_statuses`, :func:`exported_series`: what its real app answers a GET of a path with (health checks,
  /v1/metrics), and the metric series that /v1/metrics exposes; :func:`build_app` builds that app.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

from fastapi.testclient import TestClient

from nimrag.cli import SERVICES, _load
from nimrag.services.common import tracing
from nimrag.services.common.settings import NIM_ENV_NAMES, ServiceSettings

__all__ = ["SERVICES", "accepted_env", "build_app", "check_tracing_env", "default_port", "env_prefix",
           "exported_series", "get_statuses", "settings_class", "settings_from_env", "tracing_env", "unknown_env"]

# The environment a service reads before any other: cleared by settings_from_env so the test's own does not leak in.
_SERVICE_ENV_PREFIXES = ("NIMRAG_", "NIM_", "OTEL_")


def settings_class(service: str) -> type[ServiceSettings]:
    """The pydantic-settings class ``nimrag serve <service>`` builds (KeyError for an unknown service)."""
    return _load(SERVICES[service].settings)


def env_prefix(service: str) -> str:
    """The prefix of the service's own variables, e.g. ``NIMRAG_EMBED_``."""
    return settings_class(service).model_config["env_prefix"].upper()


def default_port(service: str) -> int:
    """The port the service listens on unless a setting or ``--port`` says otherwise."""
    return settings_class(service).model_fields["port"].default


@cache
def tracing_env() -> frozenset[str]:
    """The ``OTEL_*`` variables services/common/tracing.py reads or documents as read for it by the OpenTelemetry
    SDK (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...). Whole names only: ``OTEL_BSP_*`` there names a family
    of the SDK's, no one variable."""
    names = re.findall(r"\bOTEL_[A-Z0-9_]+\b", Path(tracing.__file__).read_text())
    return frozenset(n for n in names if not n.endswith("_"))


@cache
def accepted_env(service: str) -> frozenset[str]:
    """Every variable a deployment may give the service: ``<prefix><FIELD>`` for each settings field (or the field's
    own alias), the ``NIM_*`` names whose field the service has (services/common/settings.py), and
    :func:`tracing_env`. Left out on purpose, though some code reads them: XDG_CACHE_HOME and XDG_DATA_HOME (the
    settings NIM_CACHE_PATH, NIMRAG_PIPELINE_DATA_PATH say where), HF_HUB_OFFLINE and the like (``nimrag serve`` sets
    them), CUDA_VISIBLE_DEVICES (the container runtime's), ``NIMRAG_PARENT_*`` (``nimrag up``'s)."""
    fields = settings_class(service).model_fields
    prefix = env_prefix(service)
    names = {info.validation_alias.upper() if isinstance(info.validation_alias, str) else f"{prefix}{field.upper()}"
             for field, info in fields.items()}
    names |= {nim for nim, field in NIM_ENV_NAMES.items() if field in fields}
    return frozenset(names | tracing_env())


def unknown_env(service: str, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not in :func:`accepted_env` (sorted): a typo, a setting of another service,
    or a name in other letter case (the NIM and OTEL names are read case-sensitively; settings names are held to the
    capitals the docs spell them in, though pydantic would read them in any case)."""
    accepted = accepted_env(service)
    return sorted(n for n in names if n not in accepted)


@contextlib.contextmanager
def _only_environ(env: Mapping[str, str | None]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith(_SERVICE_ENV_PREFIXES)]:
            del os.environ[name]
        os.environ.update({k: v for k, v in env.items() if v is not None})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from_env(service: str, env: Mapping[str, str | None]) -> ServiceSettings:
    """The service's settings from ``env`` alone, as the service reads them at start (a None value: unset, as
    Compose leaves a variable given without a value that the host does not have). Raises pydantic's
    ValidationError for a value the service would refuse. Not thread-safe: it swaps os.environ meanwhile."""
    with _only_environ(env):
        return settings_class(service)()


def check_tracing_env(env: Mapping[str, str | None]) -> list[str]:
    """The trace exporters ``env`` turns on; raises TracingConfigError (nimrag.services.common.tracing), as the
    service does at start, for an OTEL_TRACES_EXPORTER it has no exporter for or an OTLP protocol it does not speak."""
    given = {name: value for name, value in env.items() if value is not None}
    exporters = tracing.traces_exporters(given.get("OTEL_TRACES_EXPORTER"))
    if "otlp" in exporters:
        tracing.otlp_protocol(given)
    return exporters


def build_app(service: str, data_path: Path):
    """The service's real app from its default settings, not started (no model is loaded, nothing listens). Its
    state (the pipeline's data, a model cache) goes under ``data_path``: give each call a fresh folder."""
    fields = settings_class(service).model_fields
    paths = {name: path for name, path in (("data_path", data_path), ("cache_path", data_path / "cache"))
             if name in fields}
    return _load(SERVICES[service].app_factory)(settings_class(service)(**paths))


def get_statuses(service: str, data_path: Path, paths: Iterable[str]) -> dict[str, int]:
    """Path -> the HTTP status the service's real app (see :func:`build_app`) answers a GET of it with, as a probe,
    health check or scrape asks it: 200 for /v1/health/live and /v1/metrics; 503 for /v1/health/ready until a model
    service has loaded its model (never here; the pipeline loads none: 200); 404 or 405 for what it does not serve."""
    client = TestClient(build_app(service, data_path))  # not entered: no lifespan, so no model is loaded
    try:
        return {path: client.get(path).status_code for path in paths}
    finally:
        client.close()


# The series a metric family is exposed as, by its type (the text format prometheus_client writes).
_SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
                    "gaugehistogram": ("_bucket", "_gsum", "_gcount")}


def exported_series(service: str, data_path: Path) -> set[str]:
    """The series names the service's /v1/metrics exposes (``nimrag_requests_total``, ``..._bucket``, gauges as
    named), labelled or not, from the registry of its real app (see :func:`build_app`)."""
    registry = build_app(service, data_path).state.metrics.registry
    return {family.name + suffix for family in registry.collect()
            for suffix in _SERIES_SUFFIXES.get(family.type, ("",))}

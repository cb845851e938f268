"""OTEL_TRACES_EXPORTER: the exporters the OpenTelemetry spec names that this service has, and a start-up error
for anything else (it used to export nothing, silently)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from opentelemetry import trace

from services.common.errors import StartupError
from services.common.tracing import make_tracer, traces_exporters
from tests.conftest import REPO, free_port


@pytest.mark.parametrize(("value", "expected"), [
    (None, []), ("", []), ("none", []), (" NONE ", []), ("console", ["console"]), ("otlp", ["otlp"]),
    ("otlp, Console", ["otlp", "console"]), ("console,console,", ["console"]),
])
def test_accepted_values_as_the_spec_allows_them(value, expected):
    assert traces_exporters(value) == expected


@pytest.mark.parametrize(("value", "problem"), [
    ("jaeger", "unknown exporter 'jaeger'"), ("otlp,zipkin,otpl", "unknown exporter 'zipkin', 'otpl'"),
    ("none,console", "'none' cannot be combined"),
])
def test_other_values_are_a_startup_error_naming_them_and_the_accepted_ones(value, problem):
    with pytest.raises(StartupError, match=problem) as caught:
        traces_exporters(value)
    assert f"OTEL_TRACES_EXPORTER={value!r}" in str(caught.value)
    assert "accepted: none, console, otlp" in str(caught.value)


def test_make_tracer_reads_the_environment(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not make_tracer("embed").start_span("x").is_recording()  # the API's no-op tracer
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert isinstance(make_tracer("embed"), trace.Tracer) and make_tracer("embed").start_span("x").is_recording()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(StartupError, match="jaeger"):
        make_tracer("embed")


def test_serve_with_an_unknown_exporter_exits_2_with_one_line():
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "jaeger", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # the app is built before the server starts: a regression would serve, and time out here
    out = subprocess.run([sys.executable, "-m", "nimrag.cli", "serve", "embed", "--port", str(free_port())],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("nimrag:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert errors == ["nimrag: OTEL_TRACES_EXPORTER='jaeger': unknown exporter 'jaeger'; accepted: none, console, "
                      "otlp (or a comma-separated list of console and otlp)"]

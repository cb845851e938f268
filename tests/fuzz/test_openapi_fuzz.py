"""Schema-driven fuzzing (schemathesis) of every operation each service publishes in its /openapi.json, over real
HTTP against the platform fixture's processes (embed, rerank, LLM, pipeline on loopback).

Valid and invalid inputs alike, a bounded number of each per operation. An example fails on a 5xx,
on no answer within REQUEST_TIMEOUT_S (a hang), or on an answer the document does not describe: its status code,
content type, headers, or body schema where one is documented (every error is ``ErrorResponse``).

The pass runs last in a session (tests/fuzz/conftest.py): it creates, fills and deletes collections and guardrails
policies on the shared platform, which the pipeline tests must not see half-way.
"""

from __future__ import annotations

import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_KEY
from tests.fuzz.conftest import STATS

# Examples per operation and mode: the whole pass takes 1-2 minutes on a 2-core machine. The same examples every
# run (CI stays reproducible); NIMRAG_FUZZ_RANDOM=1 explores new ones, NIMRAG_FUZZ_EXAMPLES=N sends more.
MAX_EXAMPLES = int(os.environ.get("NIMRAG_FUZZ_EXAMPLES", "50"))
DERANDOMIZE = os.environ.get("NIMRAG_FUZZ_RANDOM") != "1"
REQUEST_TIMEOUT_S = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# Generation cost, not correctness: a valid request may ask the LLM for thousands of tokens (its default is the
# whole context) in up to NIMRAG_LLM_MAX_N choices, which takes minutes on a CPU. Answers are capped at this many
# tokens and choices (a JSON integer may be written 1e6: the same number; n and best_of alike, so that equal ones
# stay equal); the fields' validation is still fuzzed by the values that are not a number (left as generated).
MAX_ANSWER_TOKENS = 8
CAPS = {"max_tokens": MAX_ANSWER_TOKENS, "max_completion_tokens": MAX_ANSWER_TOKENS, "n": 2, "best_of": 2}
GENERATING = {("llm", "/v1/chat/completions"), ("llm", "/v1/completions"), ("pipeline", "/v1/generate"),
              ("pipeline", "/v1/chat/completions")}

MODEL_SERVICES = ("embed", "rerank", "llm")

# Stateful sequences need links the documents do not declare; the coverage phase is not run by as_strategy.
CONFIG = schemathesis.Config.from_dict({"phases": {"stateful": {"enabled": False}}})
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                         suppress_health_check=list(HealthCheck))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# The admin key opens policy editing on the pipeline, so that creating, changing and deleting policies is fuzzed.
HEADERS = {"pipeline": {"Authorization": f"Bearer {ADMIN_KEY}"}}


def default_model(case) -> None:
    """A random ``model`` name is a 404 before anything else is looked at: the served (default) model is asked
    for instead, so that valid bodies reach the model. Names that are not strings still fuzz the field."""
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        del case.body["model"]


def cap_generation(case) -> None:
    if not isinstance(case.body, dict):
        return
    case.body.setdefault("max_tokens", MAX_ANSWER_TOKENS)
    for name, cap in CAPS.items():
        value = case.body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
            case.body[name] = cap


def refused_by_http_parser(response) -> bool:
    """uvicorn's HTTP parser (httptools) refuses a request line over 64 KiB with its own plain-text 400, before
    any of our code runs (a long repeated query, e.g. DELETE /v1/documents?document_names=...): not the app's to
    answer, and no schema can bound a URL's total length."""
    return (response.status_code == 400 and len(response.request.url) > 65000
            and response.text == "Invalid HTTP request received.")


def count_positive(stats: dict, case, status: int) -> None:
    stats["positive"] += 1
    stats["positive_2xx"] += 200 <= status < 300
    stats["positive_4xx"] += 400 <= status < 500
    stats["positive_statuses"][f"{case.operation.label} {status}"] += 1


def send_and_check(service: str, case, mode: GenerationMode) -> None:
    """One example: the request, then every check on its answer, counted for the session summary."""
    stats = STATS[service]
    if service in MODEL_SERVICES:
        default_model(case)
    if (service, case.operation.path) in GENERATING:
        cap_generation(case)
    started = time.perf_counter()
    try:
        response = case.call(headers=HEADERS.get(service), timeout=REQUEST_TIMEOUT_S)
        stats["2xx"] += 200 <= response.status_code < 300
        stats["statuses"][f"{case.operation.label} {response.status_code}"] += 1
        stats["5xx"] += response.status_code >= 500
        if mode is GenerationMode.POSITIVE:
            count_positive(stats, case, response.status_code)
        if refused_by_http_parser(response):
            stats["too_long"] += 1
            return
        case.validate_response(response, checks=CHECKS, headers=HEADERS.get(service))
    except BaseException:
        stats["failures"] += 1
        raise
    finally:
        stats["examples"] += 1
        stats["seconds"] += time.perf_counter() - started


def fuzz_operation(service: str, operation, mode: GenerationMode) -> None:
    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def example(case):
        send_and_check(service, case, mode)

    example()


def explain(exc: BaseException) -> str:
    return "\n".join([str(exc), *getattr(exc, "__notes__", [])])


# Operations are enumerated from the document the running service serves, so each service is one test that
# reports every failing operation (schemathesis' own per-operation parametrization of a fixture-provided schema,
# schemathesis.pytest.from_fixture, fails on pytest 9.2: it sets Function._nodeid, which pytest renamed).
@pytest.mark.parametrize("service", ["embed", "rerank", "llm", "pipeline"])
def test_openapi_fuzz(platform, service):
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{platform.ports[service]}/openapi.json", config=CONFIG)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        STATS[service]["operations"].add(operation.label)
        for mode in MODES:
            try:
                fuzz_operation(service, operation, mode)
            except Unsatisfiable:  # no input to make invalid (GET /v1/version): nothing to send
                pass
            except (Exception, FailureGroup) as exc:  # every operation is fuzzed; all failures are reported
                failures.append(f"{operation.label} ({mode.value} data):\n{explain(exc)}")
    assert not failures, f"{len(failures)} failing:\n\n" + "\n\n".join(failures)

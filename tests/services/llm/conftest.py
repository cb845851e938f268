from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServiceProcess, start_service


@pytest.fixture(scope="session")
def llm_service(service_tmp) -> Iterator[ServiceProcess]:
    """The LLM service with its defaults: the bundled SmolLM2-135M-Instruct GGUF on llama.cpp."""
    svc = start_service("llm", service_tmp)
    yield svc
    svc.stop()


def metric(base_url: str, name: str, headers: dict | None = None) -> float:
    """A metric's value summed over its labels, read from /v1/metrics."""
    text = httpx.get(base_url + "/v1/metrics", headers=headers or {}).text
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


def wait_for_metric(base_url: str, name: str, value: float, timeout_s: float = 10, headers=None) -> float:
    deadline = time.monotonic() + timeout_s
    while (current := metric(base_url, name, headers)) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return current

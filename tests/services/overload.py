"""Admission by expected wait, checked the same way on every batched service (embed, rerank): a burst against a
service started with a small maximum wait is partly refused, and everything admitted is answered."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import start_service

BURST = 12  # concurrent requests: well beyond what a tiny maximum wait lets queue behind one another


def impatient_service_fixture(service: str):
    """A module fixture: ``nimrag serve <service>`` with a maximum queue wait of 50 ms, far below one batch."""
    @pytest.fixture(scope="module")
    def impatient_service(service_tmp):
        svc = start_service(service, service_tmp, env={f"NIMRAG_{service.upper()}_MAX_QUEUE_WAIT_S": "0.05"})
        yield svc
        svc.stop()
    return impatient_service


def assert_burst_partly_refused_by_wait(base_url: str, path: str, body: dict,
                                        check_admitted: Callable[[dict], None]) -> None:
    """One request alone (nothing ahead: admitted, and the engine's throughput measured), then a concurrent burst:
    some get 429 ``queue_wait_too_long`` with a Retry-After of whole seconds in the one error shape, all the others
    200 (``check_admitted`` judges their bodies); the refusals are counted and the service still answers."""
    url = base_url + path
    assert httpx.post(url, json=body, timeout=120).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=120), range(BURST)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1, r.headers
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
            assert error["code"] == "queue_wait_too_long" and error["type"] == "rate_limit_error", error
        else:
            check_admitted(r.json())
    assert 'reason="queue_wait"' in httpx.get(base_url + "/v1/metrics").text
    assert httpx.post(url, json=body, timeout=120).status_code == 200

"""A model that fails to load keeps the process up and says why: live 200, ready and requests 503."""

from __future__ import annotations

import json
import time

import httpx

from tests.conftest import start_service


def test_model_that_fails_to_load_reports_503_with_the_reason(service_tmp, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    svc = start_service("embed", service_tmp, args=["--model", str(broken)], wait_ready=False)
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(svc.base_url + "/v1/health/ready", timeout=2)
                if ready.json()["error"]["code"] == "model_load_failed":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 503
        assert "failed to load" in ready.json()["error"]["message"] and ready.headers["retry-after"]
        assert httpx.get(svc.base_url + "/v1/health/live").status_code == 200
        refused = httpx.post(svc.base_url + "/v1/embeddings", json={"input": "x"})
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"]
    finally:
        svc.stop()

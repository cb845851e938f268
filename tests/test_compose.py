"""compose.yaml checked statically (no Docker engine here): every service builds from a Dockerfile that exists,
publishes the port its settings default to, and is health-checked on /v1/health/ready."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_every_service_builds_from_an_existing_dockerfile_and_is_health_checked():
    services = _compose()["services"]
    assert "embed" in services
    for name, svc in services.items():
        dockerfile = REPO / svc["build"]["context"] / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert "/v1/health/ready" in " ".join(svc["healthcheck"]["test"])
        text = dockerfile.read_text()
        port = re.search(r"--port\", \"(\d+)\"", text).group(1)
        assert any(p.endswith(f":{port}") for p in svc["ports"]), f"{name} does not publish {port}"
        for copied in re.findall(r"^COPY (\S+) ", text, flags=re.M):
            for path in copied.split():
                assert (REPO / path).exists(), f"{dockerfile} copies missing {path}"


def test_ports_match_service_defaults_and_bind_loopback():
    from services.embed.settings import EmbedSettings

    ports = _compose()["services"]["embed"]["ports"]
    assert ports == [f"127.0.0.1:{EmbedSettings.model_fields['port'].default}:8001"]

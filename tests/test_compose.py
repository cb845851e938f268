"""compose.yaml checked statically (no Docker engine here): every service builds from a Dockerfile that exists,
as the service its name says, publishes the port that service listens on, and is health-checked on
/v1/health/ready."""

from __future__ import annotations

import re

import pytest
import yaml

from nimrag.cli import SERVICES, _load
from tests.conftest import REPO


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@pytest.mark.parametrize("name,svc", list(_compose()["services"].items()))
def test_service_builds_runs_and_is_health_checked(name, svc):
    dockerfile = REPO / svc["build"]["context"] / svc["build"]["dockerfile"]
    assert dockerfile.is_file()
    for copied in re.findall(r"^COPY (\S+) ", dockerfile.read_text(), flags=re.M):
        assert (REPO / copied).exists(), f"{dockerfile} copies missing {copied}"
    args = svc["build"]["args"]
    assert args["SERVICE"] in SERVICES, f"{name} builds unknown service {args['SERVICE']}"
    assert any(p.endswith(f":{args['PORT']}") and p.startswith("127.0.0.1:") for p in svc["ports"])
    assert "/v1/health/ready" in " ".join(svc["healthcheck"]["test"])


def test_ports_are_the_services_own_defaults():
    for name, svc in _compose()["services"].items():
        args = svc["build"]["args"]
        settings = _load(SERVICES[args["SERVICE"]].settings)
        assert int(args["PORT"]) == settings.model_fields["port"].default, name


def test_every_service_is_in_compose():
    built = {svc["build"]["args"]["SERVICE"] for svc in _compose()["services"].values()}
    assert built == set(SERVICES)

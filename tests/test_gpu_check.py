"""scripts/gpu-check's plumbing, run for real in its CPU dry run: steps under their limits, a failing or stopped step
marked so while the rest still run, the exit code, and what it leaves in OUTDIR (summary.md first, at most 8 files,
no folders). The GPU steps themselves run on a GPU machine only (README: GPU check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu-check"
OUTPUT_FILES = {"summary.md", "results.json", "setup.log", "tests.log", "bench-embed.log", "bench-rerank.log",
                "bench-llm.log", "faiss.log"}


def gpu_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=240,
                            env={**os.environ, "GPU_CHECK_PYTHON": sys.executable,
                                 "GPU_CHECK_WORK": str(tmp_path / "work"), **env})
    return result, out


def step_rows(out: Path) -> dict[str, dict]:
    return {s["step"]: s for s in json.loads((out / "results.json").read_text())["steps"]}


def assert_returnable(out: Path) -> None:
    """What the device tool brings back: at most 8 plain files, here with no folder at all."""
    entries = list(out.iterdir())
    assert all(p.is_file() for p in entries) and len(entries) <= 8
    assert {p.name for p in entries} <= OUTPUT_FILES


def test_passing_steps_exit_zero_with_their_figures(tmp_path):
    result, out = gpu_check(tmp_path, GPU_CHECK_STEPS="facts,faiss")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check: every step passed")
    assert "| facts | passed |" in summary and "| faiss | passed |" in summary
    report = json.loads((out / "results.json").read_text())
    assert report["mode"] == "cpu-dry-run" and report["facts"]["cuda_available"] is False
    assert report["results"]["faiss"]["cpu_queries_per_s"] > 0
    assert "torch-cpu-fp32" in report["facts"]["compatible_profiles"]["embed"]
    assert set(step_rows(out)) == {"facts", "faiss"}
    assert_returnable(out)


def test_a_failed_and_a_stopped_step_fail_the_run_and_the_rest_still_run(tmp_path):
    no_wheels = tmp_path / "no-wheels"
    no_wheels.mkdir()
    # pytest cannot even import the GPU tests' modules (torch, transformers) within one second: it is stopped.
    result, out = gpu_check(tmp_path, GPU_CHECK_STEPS="install,tests,faiss", GPU_CHECK_WHEELS=str(no_wheels),
                            GPU_CHECK_CAPS="tests=1")
    assert result.returncode != 0
    rows = step_rows(out)
    assert rows["install"]["status"] == "failed" and "no wheels" in rows["install"]["note"]
    assert rows["tests"]["status"] == "timed out" and rows["tests"]["limit_s"] == "1"
    assert rows["faiss"]["status"] == "passed"  # after both
    assert (out / "summary.md").read_text().startswith("# GPU check: FAILED: install, tests")
    assert "no wheels in" in (out / "setup.log").read_text()
    assert_returnable(out)


def test_steps_left_without_time_are_not_run_and_fail_the_run(tmp_path):
    result, out = gpu_check(tmp_path, GPU_CHECK_STEPS="facts", GPU_CHECK_BUDGET_S="20")
    assert result.returncode != 0
    row = step_rows(out)["facts"]
    assert row["status"] == "not run" and "out of time" in row["note"]
    assert not (out / "setup.log").exists()  # nothing ran, so no empty log comes back

"""Killed mid-ingest with SIGKILL: `nimrag ingest` leaves a consistent collection and a rerun completes it; the
pipeline service keeps its upload tasks, which read interrupted after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from nimrag.pipeline.vectorstore.faiss import Catalog
from tests.conftest import REPO, sigkill_mid_upload, start_service

FILES = 150
UPLOAD_FILES = 60


def _ingest(folder, data_path, embed_port) -> subprocess.Popen:
    env = {**os.environ, "NIMRAG_PIPELINE_DATA_PATH": str(data_path),
           "NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{embed_port}/v1",
           "NIMRAG_PIPELINE_EMBED_BATCH_SIZE": "8"}
    # no pipeline answers at --url, so the CLI ingests in-process, the way it runs without `nimrag up`
    return subprocess.Popen([sys.executable, "-m", "nimrag.cli", "ingest", str(folder), "--collection", "crash",
                             "--url", "http://127.0.0.1:9"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _documents(data_path) -> int:
    with Catalog(data_path / "collections") as catalog:
        return len(catalog.open("crash").list_documents()) if catalog.exists("crash") else 0


def test_sigkill_mid_ingest_then_rerun(platform, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"doc-{i:03}.txt").write_text(f"Document {i} is about crate {i}. " * 80)
    data_path = tmp_path / "data"
    child = _ingest(folder, data_path, platform.ports["embed"])
    deadline = time.monotonic() + 240
    while _documents(data_path) < 10:
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    with Catalog(data_path / "collections") as catalog:
        collection = catalog.open("crash")
        assert collection.verify() == []  # every chunk has its vector and its FTS row, and nothing else
        partial = len(collection.list_documents())
    assert 10 <= partial < FILES

    rerun = _ingest(folder, data_path, platform.ports["embed"])
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert f"{FILES - partial} added" in out.decode() and f"{partial} unchanged" in out.decode()
    with Catalog(data_path / "collections") as catalog:
        collection = catalog.open("crash")
        assert collection.verify() == []
        assert sorted(d.source for d in collection.list_documents()) == sorted(p.name for p in folder.iterdir())


def _pipeline(data_path, platform, tmp_path):
    ports = platform.ports
    return start_service("pipeline", tmp_path, env={
        "NIMRAG_PIPELINE_DATA_PATH": str(data_path), "NIMRAG_PIPELINE_EMBED_BATCH_SIZE": "8",
        **{f"NIMRAG_PIPELINE_{name.upper()}_URL": f"http://127.0.0.1:{ports[name]}/v1"
           for name in ("embed", "rerank", "llm")}})


def test_upload_task_survives_a_killed_pipeline(platform, tmp_path):
    data_path = tmp_path / "data"
    uploads = [("documents", (f"doc-{i:03}.txt", f"Document {i} is about crate {i}. " * 80))
               for i in range(UPLOAD_FILES)]
    pipeline = _pipeline(data_path, platform, tmp_path)
    try:
        started = httpx.post(pipeline.base_url + "/v1/documents", files=uploads,
                             data={"data": json.dumps({"collection_name": "tasks", "blocking": False})}, timeout=60)
        task_id = started.json()["task_id"]
    except BaseException:
        pipeline.stop()
        raise
    sigkill_mid_upload(pipeline, task_id, files_done=5)

    restarted = _pipeline(data_path, platform, tmp_path)
    try:
        status = httpx.get(restarted.base_url + "/v1/status", params={"task_id": task_id}).json()
        assert status["state"] == "FAILED" and status["error"].startswith("Interrupted"), status
        reported = {f["source"] for f in status["result"]["files"] if f["status"] == "added"}
        assert 5 <= len(reported) < UPLOAD_FILES
        stored = {d["source"] for d in httpx.get(restarted.base_url + "/v1/documents",
                                                        params={"collection_name": "tasks"}).json()["documents"]}
        assert reported <= stored  # a file the task reported as added is in the collection

        again = httpx.post(restarted.base_url + "/v1/documents", files=uploads, timeout=600,
                           data={"data": json.dumps({"collection_name": "tasks", "blocking": True})}).json()
        statuses = {f["source"]: f["status"] for f in again["result"]["files"]}
        assert all(statuses[source] == "unchanged" for source in stored)
        assert again["result"]["counts"] == {"unchanged": len(stored), "added": UPLOAD_FILES - len(stored)}
    finally:
        restarted.stop()

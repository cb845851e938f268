"""A `nimrag ingest` killed with SIGKILL mid-way leaves a consistent collection, and running it again completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pipeline.store import Catalog
from tests.conftest import REPO

FILES = 150


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

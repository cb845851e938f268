"""``nimrag ingest`` against real services, through a running pipeline and in-process: each document named by its
path below what was named, every file accounted for in the summary, and a one-line error with its exit code when
a service goes away mid-ingest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nimrag.pipeline.vectorstore.faiss import Catalog
from tests.conftest import REPO, start_service
from tests.pipeline.conftest import pipeline_url
from tests.test_cli import NOWHERE, nimrag, one_line_error

FAULT_FILES = 48


def services_env(platform) -> dict[str, str]:
    return {f"NIMRAG_PIPELINE_{name.upper()}_URL": f"http://127.0.0.1:{platform.ports[name]}/v1"
            for name in ("embed", "rerank", "llm")}


def counts(stdout: str) -> dict[str, int]:
    """The summary line's counts: '2 added, 1 failed; 7 chunks indexed' -> {'added': 2, 'failed': 1}."""
    summary = next(line for line in stdout.splitlines() if "chunks indexed" in line)
    return {status: int(n) for n, status in re.findall(r"(\d+) (added|replaced|unchanged|failed)", summary)}


def listed(platform, mode: str, data_path, collection: str) -> list[str]:
    if mode == "pipeline":
        response = httpx.get(pipeline_url(platform) + "/v1/documents", params={"collection_name": collection})
        return sorted(d["source"] for d in response.json()["documents"])
    with Catalog(data_path / "collections") as catalog:
        return sorted(d.source for d in catalog.open(collection).list_documents())


@pytest.mark.parametrize("mode", ["pipeline", "in-process"])
def test_same_named_files_in_two_folders_are_two_documents(platform, tmp_path, mode):
    root = tmp_path / "docs"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        (root / folder / "notes.md").write_text(f"# Notes of {folder}\n\nThe {folder} kettle holds 1.7 litres.")
    (root / "bad.xyz").write_text("not a supported type")
    (root / "empty.txt").write_text("")
    data_path = tmp_path / "data"
    env = {"NIMRAG_PIPELINE_DATA_PATH": str(data_path), **services_env(platform)}
    url = pipeline_url(platform) if mode == "pipeline" else NOWHERE
    collection = f"names-{mode}"

    def ingest(*paths: str) -> subprocess.CompletedProcess:
        return nimrag("ingest", *paths, "--collection", collection, "--url", url, env=env, timeout=300)

    out = ingest(str(root))
    assert out.returncode == 1 and counts(out.stdout) == {"added": 2, "failed": 2}, out.stderr
    assert "2 of 4 file(s) could not be ingested" in one_line_error(out)
    assert "failed bad.xyz: unsupported file type .xyz" in out.stderr and "bad.xyz: bad.xyz" not in out.stderr
    assert "failed empty.txt: empty file" in out.stderr
    assert listed(platform, mode, data_path, collection) == ["a/notes.md", "b/notes.md"]

    (root / "a" / "notes.md").write_text("# Notes of a\n\nThe a kettle now holds 2 litres.")
    out = ingest(str(root / "*" / "notes.md"))  # a glob: names below its fixed prefix, the same as above
    assert out.returncode == 0 and counts(out.stdout) == {"replaced": 1, "unchanged": 1}, out.stderr
    assert listed(platform, mode, data_path, collection) == ["a/notes.md", "b/notes.md"]


def write_fault_folder(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(FAULT_FILES):
        (folder / f"doc-{i:03}.txt").write_text(f"Document {i} is about crate {i} and its contents. " * 60)
    return folder


def indexed(url: str | None, data_path, collection: str) -> int:
    """Documents in the collection, through the pipeline at ``url`` or (None) straight from the store."""
    if url is None:
        with Catalog(data_path / "collections") as catalog:
            return len(catalog.open(collection).list_documents()) if catalog.exists(collection) else 0
    response = httpx.get(url + "/v1/documents", params={"collection_name": collection}, timeout=10)
    return response.json()["total_documents"] if response.status_code == 200 else 0


def ingest_until_some_are_indexed(folder, url: str | None, collection: str, env: dict | None = None,
                                  at_least: int = 4) -> subprocess.Popen:
    """``nimrag ingest`` through the pipeline at ``url`` (None: in-process, with ``env``), once it has indexed
    ``at_least`` documents."""
    child = subprocess.Popen([sys.executable, "-m", "nimrag.cli", "ingest", str(folder), "--collection", collection,
                              "--url", url or NOWHERE], cwd=REPO, env={**os.environ, **(env or {})},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while indexed(url, Path((env or {}).get("NIMRAG_PIPELINE_DATA_PATH", ".")), collection) < at_least:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "nothing was indexed"
        time.sleep(0.1)
    return child


SLOW_EMBEDDING = {"NIMRAG_PIPELINE_EMBED_BATCH_SIZE": "2", "NIMRAG_PIPELINE_EMBED_CONCURRENCY": "1"}


def slow_pipeline(tmp_path, platform, embed_port: int):
    """A pipeline of its own (so that killing it, or its embedder, leaves the shared platform alone), embedding
    in small requests one at a time so that an ingest of FAULT_FILES files takes a while."""
    return start_service("pipeline", tmp_path, env={
        **services_env(platform), **SLOW_EMBEDDING, "NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "data"),
        "NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{embed_port}/v1"})


@pytest.mark.parametrize("mode", ["pipeline", "in-process"])
def test_embed_service_dying_mid_ingest_is_reported_for_every_file(platform, tmp_path, mode):
    folder = write_fault_folder(tmp_path)
    embed = start_service("embed", tmp_path)
    embed_url = f"http://127.0.0.1:{embed.port}"
    pipeline = slow_pipeline(tmp_path, platform, embed.port) if mode == "pipeline" else None
    url = pipeline.base_url if pipeline else None
    env = {**services_env(platform), **SLOW_EMBEDDING, "NIMRAG_PIPELINE_EMBED_URL": embed_url + "/v1",
           "NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "local-data")}
    try:
        child = ingest_until_some_are_indexed(folder, url, "embed-dies", env)
        embed.process.kill()
        out, err = child.communicate(timeout=600)
        documents = indexed(url, tmp_path / "local-data", "embed-dies")
    finally:
        embed.stop()
        if pipeline:
            pipeline.stop()
    seen = counts(out)
    assert child.returncode == 3, err
    assert sum(seen.values()) == FAULT_FILES and seen["failed"] > 0 and seen.get("added", 0) == documents, out
    line = one_line_error(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    if pipeline:
        assert "the pipeline stopped ingesting" in line and "embed service is unavailable" in line
    else:
        assert f"no embedding service at {embed_url}" in line
    assert "not indexed" in err


def test_pipeline_killed_mid_upload_is_a_one_line_error(platform, tmp_path):
    folder = write_fault_folder(tmp_path)
    pipeline = slow_pipeline(tmp_path, platform, platform.ports["embed"])
    try:
        child = ingest_until_some_are_indexed(folder, pipeline.base_url, "pipeline-dies")
        pipeline.process.kill()
        out, err = child.communicate(timeout=600)
    finally:
        pipeline.stop()
    seen = counts(out)
    assert child.returncode == 3, err
    assert sum(seen.values()) == FAULT_FILES and seen["failed"] > 0, out
    line = one_line_error(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    assert f"lost the connection to the pipeline at {pipeline.base_url}" in line


def test_uploaded_names_keep_their_folders_and_escapes_are_refused(platform):
    url = pipeline_url(platform) + "/v1/documents"
    data = {"data": '{"collection_name": "upload-names", "blocking": true}'}
    kept = httpx.post(url, data=data, timeout=300, files=[("documents", ("guides\\a/./notes.md", b"# A\n\nText."))])
    assert kept.status_code == 200, kept.text
    assert [f["source"] for f in kept.json()["result"]["files"]] == ["guides/a/notes.md"]
    for bad, reason in (("/etc/notes.md", "absolute"), ("a/../../notes.md", "'..'")):
        refused = httpx.post(url, data=data, timeout=60, files=[("documents", (bad, b"text"))])
        message = refused.json()["error"]["message"]
        assert refused.status_code == 400 and "Invalid file name" in message and reason in message, message

"""``nimrag ingest`` and ``nimrag ask``: through the running pipeline when one answers at its URL, otherwise
in-process (the same code, with the collections on local disk and the microservices still called over HTTP)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

UPLOAD_BATCH_FILES = 16  # files per upload request when talking to a running pipeline


def pipeline_running(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health/live", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="ingest", file=sys.stderr, dynamic_ncols=True)


def _print_report(files: list[dict]) -> int:
    failed = [f for f in files if f["status"] == "failed"]
    counts: dict[str, int] = {}
    for f in files:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    chunks = sum(f["chunks"] for f in files if f["status"] in ("added", "replaced"))
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; {chunks} chunks indexed")
    for f in failed:
        print(f"  skipped {f['source']}: {f['reason']}", file=sys.stderr)
    return 1 if failed and len(failed) == len(files) else 0


def ingest(paths: list[str], collection: str | None, url: str, headers: dict, chunk_size: int | None,
           chunk_overlap: int | None) -> int:
    from pipeline.loaders import iter_input_paths

    try:
        files = list(iter_input_paths(paths))
    except FileNotFoundError as exc:
        print(f"nimrag: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("nimrag: no files found", file=sys.stderr)
        return 2
    if pipeline_running(url):
        print(f"ingesting {len(files)} file(s) through the pipeline at {url}", file=sys.stderr)
        return _print_report(_ingest_http(files, collection, url, headers, chunk_size, chunk_overlap))
    print(f"no pipeline at {url}: ingesting in-process", file=sys.stderr)
    return _print_report(asyncio.run(_ingest_local(files, collection, chunk_size, chunk_overlap)))


def _ingest_http(files: list[Path], collection, url, headers, chunk_size, chunk_overlap) -> list[dict]:
    data = json.dumps({"collection_name": collection, "blocking": True,
                       "split_options": {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap}})
    reports = []
    with httpx.Client(timeout=None, headers=headers) as client, _progress(len(files)) as bar:
        for start in range(0, len(files), UPLOAD_BATCH_FILES):
            batch = files[start:start + UPLOAD_BATCH_FILES]
            uploads = [("documents", (str(p.name), p.read_bytes())) for p in batch]
            response = client.post(url + "/v1/documents", data={"data": data}, files=uploads)
            if response.status_code != 200:
                raise SystemExit(f"nimrag: upload failed ({response.status_code}): {response.text[:500]}")
            done = response.json()["result"]["files"]
            reports += done
            bar.update(len(batch))
            bar.set_postfix(chunks=sum(f["chunks"] for f in reports))
    return reports


async def _ingest_local(files: list[Path], collection, chunk_size, chunk_overlap) -> list[dict]:
    from pipeline.ingest import IngestItem
    from pipeline.loaders import parse_file
    from pipeline.service import PipelineService
    from pipeline.settings import PipelineSettings

    service = PipelineService(PipelineSettings())
    try:
        target = await service.ensure_collection(collection)
        items = [IngestItem(p.name, lambda p=p: parse_file(p, p.name)) for p in files]
        with _progress(len(files)) as bar:
            async def advance(report) -> None:
                bar.update(1)

            result = await service.ingestor.ingest(target, items, service.chunker(chunk_size, chunk_overlap),
                                                   on_file=advance)
        await asyncio.to_thread(target.flush)
        return [f.__dict__ for f in result.files]
    finally:
        await service.close()


def ask(question: str, collection: str | None, url: str, headers: dict, as_json: bool) -> int:
    body = {"messages": [{"role": "user", "content": question}], "collection_name": collection, "stream": True}
    if pipeline_running(url):
        return _ask_http(body, url, headers, as_json)
    print(f"no pipeline at {url}: answering in-process", file=sys.stderr)
    return asyncio.run(_ask_local(body, as_json))


def _show(event: dict, state: dict, as_json: bool) -> None:
    if "error" in event:
        raise SystemExit(f"nimrag: {event['error']['message']}")
    if "citations" in event:
        state["citations"] = event["citations"]["results"]
    for choice in event.get("choices", ()):
        text = choice.get("delta", {}).get("content") or ""
        state["text"] += text
        if text and not as_json:
            print(text, end="", flush=True)
    if event.get("metrics") is not None:
        state["metrics"] = event["metrics"]


def _finish(state: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"answer": state["text"], "citations": state["citations"], "metrics": state["metrics"]},
                         indent=2))
        return 0
    print("\n\nSources:")
    for c in state["citations"]:
        page = f", page {c['page']}" if c.get("page") else ""
        print(f"  [{c['number']}] {c['source']}{page} (chunk {c['chunk_index']}, score {c['score']:.3f})")
    return 0


def _ask_http(body: dict, url: str, headers: dict, as_json: bool) -> int:
    state = {"text": "", "citations": [], "metrics": None}
    with httpx.stream("POST", url + "/v1/generate", json=body, headers=headers, timeout=None) as response:
        if response.status_code != 200:
            response.read()
            raise SystemExit(f"nimrag: {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                _show(json.loads(line[6:]), state, as_json)
    return _finish(state, as_json)


async def _ask_local(body: dict, as_json: bool) -> int:
    from pipeline.protocol import GenerateRequest
    from pipeline.responses import AnswerShape
    from pipeline.service import PipelineService
    from pipeline.settings import PipelineSettings

    service = PipelineService(PipelineSettings())
    state = {"text": "", "citations": [], "metrics": None}
    try:
        events = await service.answer(GenerateRequest.model_validate(body))
        async for raw in AnswerShape("nimrag-rag").stream(events):
            if raw.startswith(b"data: {"):
                _show(json.loads(raw[6:]), state, as_json)
    finally:
        await service.close()
    return _finish(state, as_json)

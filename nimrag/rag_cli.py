"""``nimrag ingest`` and ``nimrag ask``: through the running pipeline when one answers at its URL, otherwise
in-process (the same code, with the collections on local disk and the microservices still called over HTTP).

Every file given to ``ingest`` ends in the summary as added, unchanged, replaced or failed (with its reason);
failures raise CLIError, which ``nimrag.cli.main`` prints as one line with its exit code."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field

import httpx

from nimrag.errors import CLIError, Exit, from_api_error, from_error, from_response, load_settings, lost_pipeline
from nimrag.inputs import InputFile, named_inputs

UPLOAD_BATCH_FILES = 16  # files per upload request when talking to a running pipeline
FAILURES_LISTED = 3  # names shown for a reason many files share


def pipeline_running(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health/live", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="ingest", file=sys.stderr, dynamic_ncols=True)


@dataclass
class IngestOutcome:
    """Each file's report (as the pipeline's ``FileReport``, a dict), and why the ingest stopped, if it did."""
    files: list[dict] = field(default_factory=list)
    stopped: CLIError | None = None

    def fail(self, inputs: list[InputFile], reason: str) -> None:
        self.files += [{"source": f.name, "status": "failed", "chunks": 0, "reason": reason} for f in inputs]


def _print_report(outcome: IngestOutcome) -> int:
    files = outcome.files
    counts: dict[str, int] = {}
    for f in files:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    chunks = sum(f["chunks"] for f in files if f["status"] in ("added", "replaced"))
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; {chunks} chunks indexed")
    by_reason: dict[str, list[str]] = {}
    for f in files:
        if f["status"] == "failed":
            by_reason.setdefault(f["reason"] or "no reason given", []).append(f["source"])
    for reason, names in by_reason.items():
        if len(names) == 1:
            print(f"  failed {names[0]}: {reason}", file=sys.stderr)
        else:
            shown = ", ".join(names[:FAILURES_LISTED]) + (", ..." if len(names) > FAILURES_LISTED else "")
            print(f"  failed {len(names)} files ({shown}): {reason}", file=sys.stderr)
    if outcome.stopped:
        raise outcome.stopped
    if by_reason:
        failed = counts["failed"]
        raise CLIError(f"{failed} of {len(files)} file(s) could not be ingested (listed above)", Exit.INCOMPLETE)
    return Exit.OK


def ingest(paths: list[str], collection: str | None, url: str, headers: dict, chunk_size: int | None,
           chunk_overlap: int | None) -> int:
    inputs = named_inputs(paths)
    outcome = IngestOutcome()
    for f in inputs:
        if f.problem:
            outcome.fail([f], f.problem)
    usable = [f for f in inputs if not f.problem]
    if pipeline_running(url):
        print(f"ingesting {len(inputs)} file(s) through the pipeline at {url}", file=sys.stderr)
        _ingest_http(usable, collection, url, headers, chunk_size, chunk_overlap, outcome)
    else:
        print(f"no pipeline at {url}: ingesting in-process", file=sys.stderr)
        asyncio.run(_ingest_local(usable, collection, chunk_size, chunk_overlap, outcome))
    return _print_report(outcome)


def _task_error(task: dict) -> CLIError:
    """A pipeline's FAILED upload task, as its error says (``Type: message``)."""
    kind, _, message = (task.get("error") or "the task failed without saying why").partition(": ")
    # DependencyError: a microservice the pipeline calls is down or failing.
    code = Exit.UNAVAILABLE if kind == "DependencyError" else Exit.SERVER_ERROR
    reason = (message or kind).rstrip(".")
    return CLIError(f"the pipeline stopped ingesting: {reason}; fix that and run the same command again (files "
                    "already indexed are skipped as unchanged)", code)


def _account(batch: list[InputFile], task: dict, outcome: IngestOutcome) -> None:
    """The batch's reports from the pipeline's task; a file it did not report fails with the task's error."""
    reports = {f["source"]: f for f in task.get("result", {}).get("files", [])}
    for f in batch:
        outcome.files.append(reports.get(f.name) or {"source": f.name, "status": "failed", "chunks": 0,
                                                     "reason": f"not indexed: {task.get('error') or 'no report'}"})
    if task.get("state") == "FAILED":
        outcome.stopped = _task_error(task)


def _ingest_http(files: list[InputFile], collection, url, headers, chunk_size, chunk_overlap,
                 outcome: IngestOutcome) -> None:
    data = json.dumps({"collection_name": collection, "blocking": True,
                       "split_options": {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap}})
    with httpx.Client(timeout=None, headers=headers) as client, _progress(len(files)) as bar:
        for start in range(0, len(files), UPLOAD_BATCH_FILES):
            batch = files[start:start + UPLOAD_BATCH_FILES]
            try:
                uploads = [("documents", (f.name, f.path.read_bytes())) for f in batch]
                response = client.post(url + "/v1/documents", data={"data": data}, files=uploads)
            except OSError as exc:  # a file vanished or became unreadable since it was listed
                raise CLIError(f"cannot read {exc.filename}: {exc.strerror}", Exit.USAGE) from None
            except httpx.TransportError as exc:
                outcome.stopped = lost_pipeline(url, exc)
                outcome.fail(batch, "unknown: the pipeline went away before answering (some may be indexed)")
            else:
                if response.is_success:
                    _account(batch, response.json(), outcome)
                else:
                    outcome.stopped = from_response(response)
                    outcome.fail(batch, f"not indexed: the pipeline refused the upload ({response.status_code})")
            bar.update(len(batch))
            if outcome.stopped:
                outcome.fail(files[start + len(batch):], "not sent: the ingest stopped (see below)")
                return


async def _ingest_local(files: list[InputFile], collection, chunk_size, chunk_overlap,
                        outcome: IngestOutcome) -> None:
    from nimrag.pipeline.app import build_service
    from nimrag.pipeline.ingest import IngestItem
    from nimrag.pipeline.loaders import parse_file
    from nimrag.pipeline.settings import PipelineSettings
    from nimrag.services.common.errors import APIError

    settings = load_settings(PipelineSettings)
    service = build_service(settings)
    try:
        await service.clients.model("embed")  # nothing running: say so before reading a file
        target = await service.ensure_collection(collection)
        limits = settings.inflate_limits()  # as the pipeline service parses uploads
        items = [IngestItem(f.name, lambda f=f: parse_file(f.path, f.name, limits=limits)) for f in files]
        with _progress(len(files)) as bar:
            async def collect(report) -> None:
                outcome.files.append(asdict(report))
                bar.update(1)

            # service.close() below persists what the store caches (the FAISS index), whatever happens
            await service.ingestor.ingest(target, items, service.chunker(chunk_size, chunk_overlap),
                                          on_file=collect)
    except APIError as exc:
        outcome.stopped = from_api_error(exc, settings)
        if not outcome.files:  # stopped before any file: the error alone says it
            raise outcome.stopped from None
    finally:
        await service.close()


def ask(question: str, collection: str | None, url: str, headers: dict, as_json: bool) -> int:
    body = {"messages": [{"role": "user", "content": question}], "collection_name": collection, "stream": True}
    if pipeline_running(url):
        return _ask_http(body, url, headers, as_json)
    print(f"no pipeline at {url}: answering in-process", file=sys.stderr)
    return asyncio.run(_ask_local(body, as_json))


def _show(event: dict, state: dict, as_json: bool, settings=None) -> None:
    if "error" in event:  # the answer failed after its stream began
        error = event["error"]
        status = 503 if error.get("type") == "service_unavailable" else 500
        raise from_error(error.get("code") or "", error.get("message") or str(error), status, settings)
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
        return Exit.OK
    print("\n\nSources:")
    for c in state["citations"]:
        page = f", page {c['page']}" if c.get("page") else ""
        print(f"  [{c['number']}] {c['source']}{page} (chunk {c['chunk_index']}, score {c['score']:.3f})")
    return Exit.OK


def _ask_http(body: dict, url: str, headers: dict, as_json: bool) -> int:
    state = {"text": "", "citations": [], "metrics": None}
    try:
        with httpx.stream("POST", url + "/v1/generate", json=body, headers=headers, timeout=None) as response:
            if not response.is_success:
                response.read()
                raise from_response(response)
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    _show(json.loads(line[6:]), state, as_json)
    except httpx.TransportError as exc:
        raise lost_pipeline(url, exc) from None
    return _finish(state, as_json)


async def _ask_local(body: dict, as_json: bool) -> int:
    from pydantic import ValidationError

    from nimrag.pipeline.app import build_service
    from nimrag.pipeline.protocol import GenerateRequest
    from nimrag.pipeline.responses import AnswerShape
    from nimrag.pipeline.settings import PipelineSettings
    from nimrag.services.common.errors import APIError

    settings = load_settings(PipelineSettings)
    service = build_service(settings)
    state = {"text": "", "citations": [], "metrics": None}
    try:
        events = await service.answer(GenerateRequest.model_validate(body))
        async for raw in AnswerShape("nimrag-rag").stream(events):
            if raw.startswith(b"data: {"):
                _show(json.loads(raw[6:]), state, as_json, settings)
    except ValidationError as exc:
        raise CLIError(f"invalid question: {exc.errors()[0]['msg']}", Exit.USAGE) from None
    except APIError as exc:
        raise from_api_error(exc, settings) from None
    finally:
        await service.close()
    return _finish(state, as_json)

"""HTTP routes of the pipeline (the NVIDIA RAG Blueprint's shapes): thin, all work is in the service layer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from pipeline.ingest import IngestItem
from pipeline.loaders import SUPPORTED_TYPES, parse_bytes
from pipeline.protocol import (
    ChatRequest,
    CreateCollection,
    GenerateRequest,
    SearchRequest,
    UploadOptions,
)
from pipeline.responses import AnswerShape
from services.common.body import json_body_openapi, parse_json_body
from services.common.cancellation import cancel_on_disconnect
from services.common.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    from_validation_errors,
)

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _service(request: Request):
    return request.app.state.service


def _json(payload) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.get("/v1/health")
async def health(request: Request, check_dependencies: bool = False) -> dict:
    body = {"message": "Service is up.", "status": "healthy"}
    if check_dependencies:
        deps = await _service(request).clients.health()
        body["dependencies"] = deps
        if any(d["status"] != "ready" for d in deps.values()):
            body["status"] = "degraded"
    return body


@router.get("/v1/collections")
async def list_collections(request: Request) -> Response:
    infos = await asyncio.to_thread(_service(request).catalog.list)
    return _json({"collections": [dataclasses.asdict(i) for i in infos], "total_collections": len(infos)})


@router.post("/v1/collections", openapi_extra=json_body_openapi(CreateCollection))
async def create_collection(request: Request) -> Response:
    body = await parse_json_body(request, CreateCollection)
    return _json(await _service(request).create_collection(body.collection_name, body.index_kind))


@router.delete("/v1/collections")
async def delete_collection(request: Request, collection_name: Annotated[str, Query()]) -> Response:
    await _service(request).delete_collection(collection_name)
    return _json({"message": f"Collection '{collection_name}' deleted.", "collection_name": collection_name})


def _safe_name(filename: str | None) -> str:
    """The base name of an uploaded file (its folders are dropped, never used as paths); '..' is refused."""
    parts = PureWindowsPath(filename or "").parts + PurePosixPath(filename or "").parts
    name = PureWindowsPath(PurePosixPath(filename or "").name).name.strip()
    if not name or name in (".", "..") or ".." in parts or len(name) > 255:
        raise InvalidRequestError(f"Invalid file name '{filename}'.", param="documents")
    return name


@router.post("/v1/documents")
async def upload_documents(request: Request) -> Response:
    service = _service(request)
    limit = service.settings.max_body_bytes
    form = await request.form(max_files=service.settings.max_files_per_upload, max_part_size=1024 * 1024)
    try:
        options = UploadOptions.model_validate_json(form.get("data") or "{}")
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False)) from None
    files = [f for f in form.getlist("documents") if isinstance(f, UploadFile)]
    if not files:
        raise InvalidRequestError("No files: send them as multipart field 'documents'.", param="documents")
    items = []
    for upload in files:
        name = _safe_name(upload.filename)
        data = await upload.read()
        if len(data) > limit:
            raise PayloadTooLargeError(limit)
        items.append(IngestItem(name, lambda data=data, name=name: parse_bytes(data, name)))
    chunker = service.chunker(options.split_options.chunk_size, options.split_options.chunk_overlap)
    return _json(await service.start_ingest(options.collection_name, items, chunker, options.blocking))


@router.get("/v1/status")
async def status(request: Request, task_id: Annotated[str, Query(max_length=64)]) -> Response:
    return _json(await _service(request).task_status(task_id))


@router.get("/v1/documents")
async def list_documents(request: Request, collection_name: str | None = None) -> Response:
    collection = await _service(request).collection(collection_name)
    docs = await asyncio.to_thread(collection.list_documents)
    return _json({"documents": [dataclasses.asdict(d) for d in docs], "total_documents": len(docs)})


@router.delete("/v1/documents")
async def delete_documents(request: Request, document_names: Annotated[list[str], Query(max_length=1000)],
                           collection_name: str | None = None) -> Response:
    collection = await _service(request).collection(collection_name)
    deleted = [name for name in document_names if await asyncio.to_thread(collection.delete_document, name)]
    missing = sorted(set(document_names) - set(deleted))
    return _json({"message": f"Deleted {len(deleted)} document(s).", "deleted": deleted, "not_found": missing})


@router.post("/v1/search", openapi_extra=json_body_openapi(SearchRequest))
async def search(request: Request) -> Response:
    body = await parse_json_body(request, SearchRequest)
    return _json(await _service(request).search(body.query, body))


async def _answer(request: Request, body: GenerateRequest) -> Response:
    service = _service(request)
    events = await service.answer(body)
    shape = AnswerShape(body.model or "nimrag-rag")
    if body.stream:
        return StreamingResponse(shape.stream(events), media_type="text/event-stream", headers=SSE_HEADERS)
    return Response(await cancel_on_disconnect(request, shape.whole(events)), media_type="application/json")


@router.post("/v1/generate", openapi_extra=json_body_openapi(GenerateRequest))
async def generate(request: Request) -> Response:
    return await _answer(request, await parse_json_body(request, GenerateRequest))


@router.post("/v1/chat/completions", openapi_extra=json_body_openapi(ChatRequest))
async def chat_completions(request: Request) -> Response:
    return await _answer(request, await parse_json_body(request, ChatRequest))


@router.get("/v1/supported-types")
async def supported_types() -> dict:
    return {"types": SUPPORTED_TYPES}

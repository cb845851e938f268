"""HTTP routes of the pipeline (the NVIDIA RAG Blueprint's shapes): thin, all work is in the service layer."""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse

from nimrag.pipeline.ingest import IngestItem, checked_document_name
from nimrag.pipeline.loaders import SUPPORTED_TYPES, parse_bytes
from nimrag.pipeline.protocol import (
    PIPELINE_MODEL,
    ChatRequest,
    CreateCollection,
    GenerateRequest,
    SearchRequest,
    UploadOptions,
)
from nimrag.pipeline.responses import AnswerShape
from nimrag.pipeline.service import PipelineService
from nimrag.pipeline.settings import PipelineSettings
from nimrag.services.common.body import json_body_openapi, parse_json_body, parse_json_text
from nimrag.services.common.cancellation import cancel_on_disconnect
from nimrag.services.common.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
)
from nimrag.services.common.fields import report_ignored
from nimrag.services.common.openapi import upload_form_openapi

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_service(request: Request) -> PipelineService:
    """The app's service (nimrag.pipeline.app builds it): every route works through it and nothing else."""
    return request.app.state.service


Service = Annotated[PipelineService, Depends(get_service)]


def _json(payload) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.get("/v1/health")
async def health(service: Service, check_dependencies: bool = False) -> dict:
    body = {"message": "Service is up.", "status": "healthy"}
    if check_dependencies:
        deps = await service.dependency_health()
        body["dependencies"] = deps
        if any(d["status"] != "ready" for d in deps.values()):
            body["status"] = "degraded"
    return body


@router.get("/v1/collections")
async def list_collections(service: Service) -> Response:
    collections = await service.list_collections()
    return _json({"collections": collections, "total_collections": len(collections)})


@router.post("/v1/collections", openapi_extra=json_body_openapi(CreateCollection))
async def create_collection(request: Request, service: Service) -> Response:
    body = await parse_json_body(request, CreateCollection)
    return _json(await service.create_collection(body.collection_name, body.index_kind))


@router.delete("/v1/collections")
async def delete_collection(service: Service, collection_name: Annotated[str, Query()]) -> Response:
    await service.delete_collection(collection_name)
    return _json({"message": f"Collection '{collection_name}' deleted.", "collection_name": collection_name})


def _safe_name(filename: str | None) -> str:
    """An uploaded file's name, kept as a relative POSIX path (the CLI sends "a/notes.md" and "b/notes.md": two
    documents); a name is never used as a path on disk. '..', absolute paths and control characters are refused."""
    try:
        return checked_document_name(filename or "")
    except ValueError as exc:
        raise InvalidRequestError(f"Invalid file name {filename!r}: {exc}.", param="documents",
                                  code="invalid_document_name") from None


@router.post("/v1/documents", openapi_extra=upload_form_openapi("documents", "data", UploadOptions))
async def upload_documents(request: Request, service: Service) -> Response:
    limit = service.settings.max_body_bytes
    form = await _upload_form(request, service.settings)
    options = _upload_options(form)
    files = form.getlist("documents")
    if not files or not all(isinstance(f, UploadFile) for f in files):
        raise InvalidRequestError("No files: send them as multipart field 'documents' (file parts, with a file "
                                  "name each).", param="documents")
    names = [_safe_name(upload.filename) for upload in files]
    _refuse_duplicate_names(names)
    items, parse_limits = [], service.settings.inflate_limits()
    for upload, name in zip(files, names):
        data = await upload.read()
        if len(data) > limit:
            raise PayloadTooLargeError(limit)
        items.append(IngestItem(name, lambda data=data, name=name: parse_bytes(data, name, limits=parse_limits)))
    chunker = service.chunker(options.split_options.chunk_size, options.split_options.chunk_overlap)
    return _json(await service.start_ingest(options.collection_name, items, chunker, options.blocking))


async def _upload_form(request: Request, settings: PipelineSettings) -> FormData:
    """The upload's multipart form; what Starlette refuses (it raises HTTPException) becomes a 400 that says
    what is wrong, in the one error shape."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        shown = repr(content_type) if content_type else "one without a Content-Type"
        raise InvalidRequestError(f"An upload is a multipart/form-data request, not {shown}: files in field "
                                  "'documents', options in field 'data'.", param="documents", code="not_multipart")
    try:
        return await request.form(max_files=settings.max_files_per_upload,
                                  max_part_size=settings.max_form_field_bytes)
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
    if detail.startswith("Too many files"):
        raise InvalidRequestError(f"Too many files: at most {settings.max_files_per_upload} per upload "
                                  "(NIMRAG_PIPELINE_MAX_FILES_PER_UPLOAD); send the rest in another upload.",
                                  param="documents", code="too_many_files")
    if detail.startswith("Part exceeded"):
        raise InvalidRequestError(f"A form field is larger than {settings.max_form_field_bytes} bytes "
                                  "(NIMRAG_PIPELINE_MAX_FORM_FIELD_BYTES); only files may be larger.",
                                  param="data", code="form_field_too_large")
    raise InvalidRequestError(f"The multipart form cannot be read: {detail}", param="documents",
                              code="invalid_multipart")


def _upload_options(form: FormData) -> UploadOptions:
    """The ``data`` field, validated and audited like a JSON body; other form fields are named back as ignored."""
    values = form.getlist("data")
    if len(values) > 1 or any(isinstance(v, UploadFile) for v in values):
        raise InvalidRequestError("Send the options once, as the form field 'data' (a JSON string, not a file).",
                                  param="data")
    report_ignored(sorted({key for key in form.keys() if key not in ("documents", "data")}))
    return parse_json_text(values[0] if values else "{}", UploadOptions)


def _refuse_control_characters(names: list[str], param: str) -> None:
    """Names to delete: a NUL, a line break or another control character is refused (uploads are checked by
    ``_safe_name``, which refuses them too)."""
    for name in names:
        if any(unicodedata.category(char) == "Cc" for char in name):
            raise InvalidRequestError(f"The document name {name!r} holds a control character.", param=param,
                                      code="invalid_document_name")


def _refuse_duplicate_names(names: list[str]) -> None:
    """Two files of one name in one upload would be one document: refused, so that neither is lost."""
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidRequestError(f"More than one file in this upload is named {', '.join(map(repr, repeated[:5]))}"
                                  "; a name is one document: send each once (a later upload replaces it).",
                                  param="documents", code="duplicate_document_name")


@router.get("/v1/status")
async def status(service: Service, task_id: Annotated[str, Query(max_length=64)]) -> Response:
    return _json(await service.task_status(task_id))


@router.get("/v1/documents")
async def list_documents(service: Service, collection_name: str | None = None) -> Response:
    return _json(await service.list_documents(collection_name))


@router.delete("/v1/documents")
async def delete_documents(service: Service, document_names: Annotated[list[str], Query(max_length=1000)],
                           collection_name: str | None = None) -> Response:
    _refuse_control_characters(document_names, "document_names")
    return _json(await service.delete_documents(collection_name, document_names))


@router.post("/v1/search", openapi_extra=json_body_openapi(SearchRequest))
async def search(request: Request, service: Service) -> Response:
    return _json(await service.search(await parse_json_body(request, SearchRequest)))


async def _answer(request: Request, service: PipelineService, body: GenerateRequest) -> Response:
    events = await service.answer(body)
    shape = AnswerShape(body.model or PIPELINE_MODEL, with_citations=body.enable_citations)
    if body.stream:
        return StreamingResponse(shape.stream(events), media_type="text/event-stream", headers=SSE_HEADERS)
    return Response(await cancel_on_disconnect(request, shape.whole(events)), media_type="application/json")


@router.post("/v1/generate", openapi_extra=json_body_openapi(GenerateRequest))
async def generate(request: Request, service: Service) -> Response:
    return await _answer(request, service, await parse_json_body(request, GenerateRequest))


@router.post("/v1/chat/completions", openapi_extra=json_body_openapi(ChatRequest))
async def chat_completions(request: Request, service: Service) -> Response:
    return await _answer(request, service, await parse_json_body(request, ChatRequest))


@router.get("/v1/supported-types")
async def supported_types() -> Response:
    return _json({"types": dict(SUPPORTED_TYPES)})  # the read-only mapping is not JSON itself

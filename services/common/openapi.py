"""The published OpenAPI documents: request schemas under ``components/schemas``, and the error shape documented.

Endpoints parse their bodies themselves (:mod:`services.common.body`), so FastAPI knows nothing of their models:
``services.common.body.json_body_openapi`` documents one (with :func:`schema_ref`), and :func:`install_openapi`
finishes the document FastAPI generates:

- the schema definitions a body carries (``$defs``, the model's and those it uses) move to
  ``components/schemas``, where its ``#/components/schemas/...`` references point;
- FastAPI's ``{"detail"}`` 422 (HTTPValidationError) gives way to the errors the endpoint really answers, each in
  the one error shape (``ErrorResponse``, as :func:`services.common.errors.error_body` writes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.common.errors import ErrorResponse
from services.common.middleware import OPEN_PATHS

REF_TEMPLATE = "#/components/schemas/{model}"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})

# (path, method, operation) -> the error statuses it answers beyond those every endpoint shares.
ExtraErrors = Callable[[str, str, dict], Iterable[int]]


def schema_ref(model: type[BaseModel]) -> dict:
    """A reference to ``model``'s schema in ``components/schemas``, carrying the definitions (``$defs``) that
    :func:`install_openapi` moves there."""
    refs, definitions = models_json_schema([(model, "validation")], ref_template=REF_TEMPLATE)
    return {**refs[(model, "validation")], "$defs": definitions["$defs"]}


def streamed_answer_openapi() -> dict:
    """``openapi_extra`` responses of an endpoint that may answer with server-sent events."""
    return {"200": {"description": "The answer: JSON, or server-sent events when the request asks to stream.",
                    "content": {"text/event-stream": {}}}}  # events of the JSON answer's chunks


def upload_form_openapi(files_field: str, json_field: str, model: type[BaseModel]) -> dict:
    """``openapi_extra`` of a multipart upload: files in ``files_field``, options (``model`` as a JSON string) in
    ``json_field``."""
    form = {"type": "object", "required": [files_field], "properties": {
        files_field: {"type": "array", "items": {"type": "string", "format": "binary"}},
        json_field: {"type": "string", "contentMediaType": "application/json", "contentSchema": schema_ref(model),
                     "description": f"{model.__name__} as a JSON string."}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


def _move_definitions(node: Any, schemas: dict[str, Any]) -> None:
    """Move every ``$defs`` found under ``node`` into ``schemas``; one name must mean one schema."""
    if isinstance(node, list):
        for item in node:
            _move_definitions(item, schemas)
    elif isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different request schemas are named '{name}' in one OpenAPI document")
        for value in node.values():
            _move_definitions(value, schemas)


def shared_errors(path: str, operation: dict) -> set[int]:
    """What any endpoint may answer: 401 where a key is needed, the parsing errors where there is input, 500."""
    errors = {500} if path in OPEN_PATHS else {401, 500}
    if operation.get("parameters"):
        errors.add(422)
    if "requestBody" in operation:
        errors |= {400, 413, 422}
    return errors


def _error_response(status: int) -> dict:
    return {"description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="ErrorResponse")}}}}


def _document_errors(path: str, method: str, operation: dict, extra_errors: ExtraErrors | None) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's {"detail"}: our handlers answer 422 in the error shape instead
    errors = shared_errors(path, operation) | set(extra_errors(path, method, operation) if extra_errors else ())
    for status in sorted(errors):
        responses.setdefault(str(status), _error_response(status))


def finish_document(doc: dict, extra_errors: ExtraErrors | None = None) -> dict:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _move_definitions(schema_ref(ErrorResponse), schemas)
    _move_definitions(doc["paths"], schemas)
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if method in HTTP_METHODS:
                _document_errors(path, method, operation, extra_errors)
    return doc


def install_openapi(app: FastAPI, extra_errors: ExtraErrors | None = None) -> None:
    """Serve the finished document at ``/openapi.json``; ``extra_errors`` adds each endpoint's own errors."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = finish_document(FastAPI.openapi(app), extra_errors)
        return app.openapi_schema

    app.openapi = openapi

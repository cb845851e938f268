"""The published OpenAPI documents: request schemas under ``components/schemas``, and the error shape documented.

Endpoints parse their bodies themselves (:mod:`nimrag.services.common.body`), so FastAPI knows nothing of their models:
``nimrag.services.common.body.json_body_openapi`` documents one (with :func:`schema_ref`), and :func:`install_openapi`
finishes the document FastAPI generates:

- the schema definitions a body carries (``$defs``, the model's and those it uses) move to
  ``components/schemas``, where its ``#/components/schemas/...`` references point;
- FastAPI's ``{"detail"}`` 422 (HTTPValidationError) gives way to the errors the endpoint really answers, each in
  the one error shape (``ErrorResponse``, as :func:`nimrag.services.common.errors.error_body` writes it);
- the bounds a setting sets (:func:`setting_limit`) take the running service's values.

A request the schemas describe is one the service accepts: pydantic's constraints are in them as they are, and the
rules validators and the serving layer check with messages of their own are added with :func:`served_rule`.
Cross-field rules a schema can state are in the model's ``json_schema_extra``; the rest are in descriptions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic.json_schema import models_json_schema

from nimrag.services.common.errors import ErrorResponse
from nimrag.services.common.middleware import OPEN_PATHS

REF_TEMPLATE = "#/components/schemas/{model}"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})

# (path, method, operation) -> the error statuses it answers beyond those every endpoint shares.
ExtraErrors = Callable[[str, str, dict], Iterable[int]]

# Text with something in it: a character outside the whitespace Python's str.strip() removes (the services refuse
# blank texts), spelled out so that every regex dialect (ECMA 262, Python, Rust) reads it alike.
NON_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
SETTING_LIMITS = "x-nimrag-setting-limits"  # a marker finish_document replaces with the setting's value
SET_BY = "x-nimrag-set-by"  # keyword -> the environment variable that sets it, as published
_TIGHTER = {"maximum": min, "maxItems": min, "maxLength": min, "maxProperties": min,
            "minimum": max, "minItems": max, "minLength": max}


def served_rule(**keywords: Any) -> FieldInfo:
    """JSON Schema keywords (``minLength=1``, ``pattern=NON_BLANK``) of a rule that a validator or the serving
    layer checks with a message of its own (the serving layer's 400 names the item and why): the schema states
    it, and pydantic does not check it a second time. Use as ``Annotated`` metadata."""
    return Field(json_schema_extra=keywords)


def setting_limit(**limits: str) -> FieldInfo:
    """Bounds a setting sets (``maxItems="max_inputs"``) and the serving layer checks: each service publishes its
    own settings' values (a bound of the field's own, e.g. ``le=128``, stays when it is tighter)."""
    if unknown := limits.keys() - _TIGHTER.keys():
        raise ValueError(f"not a bound keyword: {sorted(unknown)}")
    return Field(json_schema_extra={SETTING_LIMITS: limits})


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
    """``openapi_extra`` of a multipart upload: files in ``files_field`` (at least one), options (``model``, a JSON
    part: OpenAPI's ``encoding``) in ``json_field``."""
    form = {"type": "object", "required": [files_field], "properties": {
        files_field: {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"},
                      "description": "The files, each with a file name of its own (a name is one document)."},
        json_field: {**schema_ref(model), "description": f"{model.__name__}: a form field (no file name) holding "
                     "JSON."}}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": form, "encoding": {json_field: {"contentType": "application/json"}}}}}}


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


def _env_name(settings: Any, name: str) -> str:
    return f"{getattr(settings, 'model_config', {}).get('env_prefix', '')}{name}".upper()


def _apply_setting_limits(node: Any, settings: Any) -> None:
    """Replace every :func:`setting_limit` marker under ``node`` with the bounds ``settings`` give (none without
    settings), naming the environment variable of each in ``x-nimrag-set-by``."""
    if isinstance(node, list):
        for item in node:
            _apply_setting_limits(item, settings)
    elif isinstance(node, dict):
        for keyword, name in node.pop(SETTING_LIMITS, {}).items():
            value = getattr(settings, name, None)
            if value is not None:
                node[keyword] = _TIGHTER[keyword](node[keyword], value) if keyword in node else value
                node.setdefault(SET_BY, {})[keyword] = _env_name(settings, name)
        for value in node.values():
            _apply_setting_limits(value, settings)


def finish_document(doc: dict, extra_errors: ExtraErrors | None = None, settings: Any = None) -> dict:
    doc = copy.deepcopy(doc)  # FastAPI's holds the routes' openapi_extra itself, which other apps share
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _move_definitions(schema_ref(ErrorResponse), schemas)
    _move_definitions(doc["paths"], schemas)
    _apply_setting_limits(doc, settings)
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if method in HTTP_METHODS:
                _document_errors(path, method, operation, extra_errors)
    return doc


def install_openapi(app: FastAPI, extra_errors: ExtraErrors | None = None) -> None:
    """Serve the finished document at ``/openapi.json``; ``extra_errors`` adds each endpoint's own errors, and the
    app's settings (``app.state.settings``) the bounds they set."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = finish_document(FastAPI.openapi(app), extra_errors,
                                                 getattr(app.state, "settings", None))
        return app.openapi_schema

    app.openapi = openapi

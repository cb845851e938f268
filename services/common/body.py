"""Parse JSON request bodies whatever their Content-Type says, straight from bytes (pydantic's fast path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from nimrag.services.common.cancellation import cancel_on_disconnect
from nimrag.services.common.errors import from_validation_errors
from nimrag.services.common.fields import check_fields
from nimrag.services.common.openapi import schema_ref, streamed_answer_openapi

M = TypeVar("M", bound=BaseModel)


def parse_json_text(text: str | bytes, model: type[M]) -> M:
    """Validate JSON as ``model``: 400/422 in the one error shape; unsupported fields refused, unknown ones named."""
    try:
        body = model.model_validate_json(text)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False)) from None
    check_fields(body)
    return body


async def parse_json_body(request: Request, model: type[M]) -> M:
    return parse_json_text(await request.body(), model)


def json_body_openapi(model: type[BaseModel]) -> dict:
    """``openapi_extra`` that documents a body parsed with :func:`parse_json_body` (its schema goes to
    ``components/schemas``: see nimrag.services.common.openapi); a body with a ``stream`` field may be answered with
    server-sent events."""
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema_ref(model)}}}}
    if "stream" in model.model_fields:
        extra["responses"] = streamed_answer_openapi()
    return extra


async def json_endpoint(request: Request, model: type[M], work: Callable[[M], Awaitable[bytes]]) -> Response:
    """Parse the body as ``model``, run ``work`` on it (cancelled if the client goes away), answer its JSON."""
    body = await parse_json_body(request, model)
    return Response(await cancel_on_disconnect(request, work(body)), media_type="application/json")

"""Parse JSON request bodies whatever their Content-Type says, straight from bytes (pydantic's fast path)."""

from __future__ import annotations

from typing import TypeVar

from collections.abc import Awaitable, Callable

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from services.common.cancellation import cancel_on_disconnect
from services.common.errors import from_validation_errors

M = TypeVar("M", bound=BaseModel)


async def parse_json_body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False)) from None


def json_body_openapi(model: type[BaseModel]) -> dict:
    """``openapi_extra`` that documents a body parsed with :func:`parse_json_body`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def json_endpoint(request: Request, model: type[M], work: Callable[[M], Awaitable[bytes]]) -> Response:
    """Parse the body as ``model``, run ``work`` on it (cancelled if the client goes away), answer its JSON."""
    body = await parse_json_body(request, model)
    return Response(await cancel_on_disconnect(request, work(body)), media_type="application/json")

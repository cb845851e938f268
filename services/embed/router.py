"""HTTP routes of the embedding service: thin, all work is in the serving layer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.common.cancellation import cancel_on_disconnect
from services.common.body import json_body_openapi, parse_json_body
from services.embed.protocol import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=json_body_openapi(EmbeddingRequest))
async def create_embeddings(request: Request) -> Response:
    body = await parse_json_body(request, EmbeddingRequest)
    payload = await cancel_on_disconnect(request, request.app.state.serving.create_embeddings(body))
    return Response(payload, media_type="application/json")

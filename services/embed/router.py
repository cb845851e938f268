"""HTTP routes of the embedding service: thin, all work is in the serving layer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nimrag.services.common.body import json_body_openapi, json_endpoint
from nimrag.services.embed.protocol import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=json_body_openapi(EmbeddingRequest))
async def create_embeddings(request: Request) -> Response:
    return await json_endpoint(request, EmbeddingRequest, request.app.state.serving.create_embeddings)

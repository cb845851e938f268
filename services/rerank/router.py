"""HTTP routes of the reranking service: thin, all work is in the serving layer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nimrag.services.common.body import json_body_openapi, json_endpoint
from nimrag.services.rerank.protocol import RankingRequest, RerankRequest

router = APIRouter()


@router.post("/v1/ranking", openapi_extra=json_body_openapi(RankingRequest))
async def ranking(request: Request) -> Response:
    return await json_endpoint(request, RankingRequest, request.app.state.serving.ranking)


@router.post("/v1/rerank", openapi_extra=json_body_openapi(RerankRequest))
async def rerank(request: Request) -> Response:
    return await json_endpoint(request, RerankRequest, request.app.state.serving.rerank)

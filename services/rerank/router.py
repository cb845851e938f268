"""HTTP routes of the reranking service: thin, all work is in the serving layer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from services.common.body import json_body_openapi, parse_json_body
from services.common.cancellation import cancel_on_disconnect
from services.rerank.protocol import RankingRequest, RerankRequest

router = APIRouter()


@router.post("/v1/ranking", openapi_extra=json_body_openapi(RankingRequest))
async def ranking(request: Request) -> Response:
    body = await parse_json_body(request, RankingRequest)
    payload = await cancel_on_disconnect(request, request.app.state.serving.ranking(body))
    return Response(payload, media_type="application/json")


@router.post("/v1/rerank", openapi_extra=json_body_openapi(RerankRequest))
async def rerank(request: Request) -> Response:
    body = await parse_json_body(request, RerankRequest)
    payload = await cancel_on_disconnect(request, request.app.state.serving.rerank(body))
    return Response(payload, media_type="application/json")

"""HTTP routes of the LLM service: thin, all work is in the serving layer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from nimrag.services.common.body import json_body_openapi, json_endpoint, parse_json_body
from nimrag.services.common.cancellation import cancel_on_disconnect
from nimrag.services.llm.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
)

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _respond(request: Request, work) -> Response:
    # A client that leaves stops its generation: through cancellation here, or by the stream being closed.
    answer, streaming = await cancel_on_disconnect(request, work)
    if streaming:
        return StreamingResponse(answer, media_type="text/event-stream", headers=SSE_HEADERS)
    return Response(answer, media_type="application/json")


@router.post("/v1/chat/completions", openapi_extra=json_body_openapi(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await parse_json_body(request, ChatCompletionRequest)
    return await _respond(request, request.app.state.serving.chat(body))


@router.post("/v1/completions", openapi_extra=json_body_openapi(CompletionRequest))
async def completions(request: Request) -> Response:
    body = await parse_json_body(request, CompletionRequest)
    return await _respond(request, request.app.state.serving.complete(body))


@router.post("/tokenize", openapi_extra=json_body_openapi(TokenizeRequest))
async def tokenize(request: Request) -> Response:
    return await json_endpoint(request, TokenizeRequest, request.app.state.serving.tokenize)

"""One error type per kind, all rendered in OpenAI's error shape.

Every non-2xx answer of every service is ``{"error": {"message", "type", "param", "code"}}``: the shape the
``openai`` SDK parses into its exception messages, and the one vLLM serves.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response


class StartupError(RuntimeError):
    """A service cannot start as configured (bad model folder, impossible profile); the message says why."""


class APIError(Exception):
    """Base of every error a service answers with; subclasses fix the status and type."""

    status_code = 500
    error_type = "internal_server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.error_type
        self.headers = headers or {}


class InvalidRequestError(APIError):
    """The request is well-formed JSON but asks for something the service cannot do (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class MalformedRequestError(InvalidRequestError):
    """The body is not valid JSON (400)."""

    error_type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message, code="malformed_json")


class RequestValidationFailed(APIError):
    """The body does not match the endpoint's schema (422)."""

    status_code = 422
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="validation_error")


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str = "Missing or invalid API key: send 'Authorization: Bearer <key>'."):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, requested: str, served: list[str]):
        super().__init__(f"The model '{requested}' does not exist here; this service serves: {', '.join(served)}.",
                         param="model", code="model_not_found")


class NotFoundError(APIError):
    status_code = 404
    error_type = "not_found_error"


class ConflictError(APIError):
    """The request conflicts with what is stored (it exists already, another version is current): 409."""

    status_code = 409
    error_type = "invalid_request_error"


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"

    def __init__(self, limit_bytes: int):
        super().__init__(f"Request body is larger than the limit of {limit_bytes} bytes.",
                         code="request_too_large")


class QueueFullError(APIError):
    """The service is at its configured queue depth; the client should retry later (429)."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, queued: int, limit: int, retry_after_s: int = 1):
        super().__init__(f"The request queue is full ({queued} of {limit} items waiting); retry after "
                         f"{retry_after_s} s.", code="queue_full", headers={"Retry-After": str(retry_after_s)})


class QueueWaitTooLongError(APIError):
    """The work queued ahead would not finish within the configured maximum wait; retry later (429)."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, expected_s: float, limit_s: float, retry_after_s: int):
        super().__init__(f"The service is overloaded: this request would wait about {expected_s:.1f} s, more than "
                         f"the limit of {limit_s:g} s; retry after {retry_after_s} s.", code="queue_wait_too_long",
                         headers={"Retry-After": str(retry_after_s)})


class ServiceNotReadyError(APIError):
    """The model is still loading or failed to load, or a store the service needs is unreachable now: 503, and
    retrying after ``retry_after_s`` may succeed."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, message: str = "The model is still loading; retry shortly.", retry_after_s: int = 5,
                 code: str = "model_not_ready"):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class ClientDisconnected(APIError):
    """The client closed the connection before the answer was ready; nobody reads this answer (499, as nginx)."""

    status_code = 499
    error_type = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("Client closed the request.")


class InternalError(APIError):
    status_code = 500
    error_type = "internal_server_error"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer, as :func:`error_body` writes it (documented in the OpenAPI documents)."""

    error: ErrorDetail


def error_body(err: APIError) -> bytes:
    return orjson.dumps({"error": {"message": err.message, "type": err.error_type,
                                   "param": err.param, "code": err.code}})


def error_response(err: APIError) -> Response:
    return Response(error_body(err), status_code=err.status_code, media_type="application/json",
                    headers=err.headers)


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Turn pydantic's error list into one readable sentence and the first offending field."""
    parts = []
    first_param = None
    for e in errors[:5]:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        first_param = first_param or field
        parts.append(f"{field}: {e.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "Invalid request: " + "; ".join(parts) + more, first_param


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """The error for a pydantic validation failure: malformed JSON (400) or a schema mismatch (422)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return MalformedRequestError("Request body is not valid JSON.")
    if any(e.get("type") in ("model_type", "model_attributes_type", "dict_type") and
           [p for p in e.get("loc", ()) if p != "body"] == [] for e in errors):
        return RequestValidationFailed("Request body must be a JSON object.", param=None)
    message, param = _describe_validation(errors)
    return RequestValidationFailed(message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception a request can raise into the one error shape; nothing escapes as a bare 500. Call it
    before adding RequestContextMiddleware, so that a 500 passes through that (request id, metrics, log)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(from_validation_errors(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFoundError("No such endpoint."))
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError("Method not allowed on this endpoint."))
        err = APIError(str(exc.detail))
        err.status_code = exc.status_code
        return error_response(err)

    # Last resort, for a failure outside UnexpectedErrorMiddleware: Starlette's ServerErrorMiddleware answers with
    # this, then re-raises, and the server drops the connection.
    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return internal_error(app, exc)

    app.add_middleware(UnexpectedErrorMiddleware, fastapi_app=app)


def internal_error(app: FastAPI, exc: BaseException) -> Response:
    app.state.logger.exception("unhandled error", exc_info=exc)
    return error_response(InternalError("Internal error; the request id in the logs has the details."))


class UnexpectedErrorMiddleware:
    """Answers an unexpected exception with a clean 500 in the error shape, and the connection stays usable.

    Starlette hands ``Exception`` to its outermost ServerErrorMiddleware, which re-raises after answering, and
    uvicorn then closes the keep-alive connection without ``Connection: close``: the client's next request on it
    fails. Here the exception ends with the answer. Once a (streamed) answer has started, nothing can be answered
    any more: the exception goes on and the connection is closed, which is how the client learns the stream broke.
    """

    def __init__(self, app, *, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except Exception as exc:
            if started:
                raise
            await internal_error(self.fastapi_app, exc)(scope, receive, send)

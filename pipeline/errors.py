"""The pipeline's own API errors, and the vector store's errors as HTTP answers, in one place.

The service turns the errors it expects of a call into errors naming the request's field (a missing collection
is ``collection_name``'s 404); whatever else a store raises reaches the app's handler here:

- ``StoreBusy``, ``StoreUnavailable``, ``CollectionClosed``: 503 with ``Retry-After`` (another writer holds the
  collection, the Milvus server is down or too slow, or the pipeline is shutting down): retrying succeeds later.
- ``InvalidArgument``: 400 (what the store refuses: a filter, metadata JSON cannot hold, a bad name).
- ``IncompatibleCollection``: 409 (written by a store with another schema: delete and re-ingest it).
- ``CollectionNotFound``: 404 (deleted meanwhile), ``CollectionExists``: 409.
- any other ``StoreError``: 500, logged with the request id.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from nimrag.pipeline.vectorstore.base import (
    CollectionClosed,
    CollectionExists,
    CollectionNotFound,
    IncompatibleCollection,
    InvalidArgument,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)
from nimrag.services.common.errors import (
    APIError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceNotReadyError,
    error_response,
    internal_error,
)

STORE_RETRY_AFTER_S = 2  # a busy writer or a restarting Milvus is usually back within seconds
STORE_ERRORS = {400, 404, 409, 503}  # what any endpoint that reaches the store may answer because of it


class CollectionMissing(NotFoundError):
    def __init__(self, name: str, param: str = "collection_name"):
        super().__init__(f"Collection '{name}' does not exist.", param=param, code="collection_not_found")


class CollectionConflict(ConflictError):
    """The collection exists already, or was written by a store of another schema."""


def retry_later(message: str, code: str) -> ServiceNotReadyError:
    return ServiceNotReadyError(message, retry_after_s=STORE_RETRY_AFTER_S, code=code)


def store_api_error(exc: StoreError) -> APIError | None:
    """The HTTP error for a store's error; None for one that is the server's fault (a 500)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, StoreBusy):
        return retry_later(f"The collection is busy: {message}. Retry shortly.", "store_busy")
    if isinstance(exc, StoreUnavailable):
        return retry_later(f"The vector store cannot be reached: {message}. Retry shortly.", "store_unavailable")
    if isinstance(exc, CollectionClosed):
        return retry_later(f"The vector store is closing: {message}.", "store_closed")
    if isinstance(exc, InvalidArgument):
        return InvalidRequestError(message, code="store_invalid_argument")
    if isinstance(exc, IncompatibleCollection):
        return CollectionConflict(f"{message}. Delete the collection and ingest its documents again.",
                                  code="collection_incompatible")
    if isinstance(exc, CollectionNotFound):
        return NotFoundError(message, code="collection_not_found")
    if isinstance(exc, CollectionExists):
        return CollectionConflict(message, code="collection_exists")
    return None


def install_store_error_handler(app: FastAPI) -> None:
    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> Response:
        api_error = store_api_error(exc)
        return error_response(api_error) if api_error else internal_error(app, exc)

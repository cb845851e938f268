"""pymilvus's exceptions as the store contract's errors: callers never see an engine's own.

Milvus reports errors by code (status.code; Milvus Lite sets the same codes): 100 collection not found, 2 the
client cannot reach the server, 8 and 9 rate limited or denied, 6 and 1100 an argument the server refuses.
A code the store does not know becomes a plain StoreError naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from pymilvus import MilvusException
from pymilvus.exceptions import (
    ConnectError,
    ConnectionConfigException,
    DataNotMatchException,
    DataTypeNotMatchException,
    MilvusUnavailableException,
    ParamError,
)

from nimrag.pipeline.vectorstore.base import (
    CollectionNotFound,
    InvalidArgument,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)

COLLECTION_NOT_FOUND = 100
COLLECTION_NOT_LOADED = 101
UNAVAILABLE = 2
RATE_LIMITED = (8, 9)
INVALID = (6, 1100)
# gRPC statuses pymilvus raises as they are (it does not retry them) or puts in a MilvusException's code
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE: "the server is down or unreachable",
                grpc.StatusCode.DEADLINE_EXCEEDED: "no answer within the timeout (NIMRAG_PIPELINE_MILVUS_TIMEOUT_S)",
                grpc.StatusCode.UNAUTHENTICATED: "the token was refused (NIMRAG_PIPELINE_MILVUS_TOKEN)",
                grpc.StatusCode.PERMISSION_DENIED: "the token may not do this (NIMRAG_PIPELINE_MILVUS_TOKEN)"}


def store_error(error: Exception, what: str) -> StoreError:
    """The contract's error for a pymilvus failure of ``what`` (e.g. "search of collection 'docs'")."""
    if isinstance(error, grpc.RpcError):
        code, message = error.code(), error.details()
    else:
        code, message = getattr(error, "code", None), getattr(error, "message", "") or str(error)
    if code in _UNREACHABLE:
        return StoreUnavailable(f"Milvus failed the {what}: {_UNREACHABLE[code]} ({message})")
    if isinstance(error, (MilvusUnavailableException, ConnectError, ConnectionConfigException)) or code == UNAVAILABLE:
        return StoreUnavailable(f"Milvus cannot be reached for the {what}: {message}")
    if code == COLLECTION_NOT_FOUND:
        return CollectionNotFound(f"{what}: the collection does not exist")
    if code in RATE_LIMITED:
        return StoreBusy(f"Milvus refused the {what} for now: {message}")
    if (isinstance(error, (ParamError, DataNotMatchException, DataTypeNotMatchException)) or code in INVALID
            or getattr(error, "is_input_error", False)):
        return InvalidArgument(f"Milvus refused the {what}: {message}")
    return StoreError(f"Milvus failed the {what} (code {code}): {message}")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Run pymilvus calls; raise what they raise as StoreErrors."""
    try:
        yield
    except (MilvusException, grpc.RpcError) as error:
        raise store_error(error, what) from error


def is_not_loaded(error: BaseException) -> bool:
    return isinstance(error, MilvusException) and error.code == COLLECTION_NOT_LOADED

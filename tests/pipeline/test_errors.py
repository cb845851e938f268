"""The store's errors as HTTP answers: each class its status, code and Retry-After, through a real app."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from nimrag.pipeline.errors import install_store_error_handler
from nimrag.pipeline.vectorstore.base import (
    CollectionClosed,
    IncompatibleCollection,
    InvalidArgument,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)
from nimrag.services.common.errors import install_error_handlers

CASES = [
    (StoreBusy("held by another writer"), 503, "store_busy"),
    (StoreUnavailable("Milvus is down"), 503, "store_unavailable"),
    (CollectionClosed("closed"), 503, "store_closed"),
    (InvalidArgument("metadata must be JSON-serializable"), 400, "store_invalid_argument"),
    (IncompatibleCollection("schema 2, this store reads 1"), 409, "collection_incompatible"),
    (StoreError("something unexpected"), 500, "internal_server_error"),
]


def app_raising(error: Exception) -> FastAPI:
    app = FastAPI()
    app.state.logger = logging.getLogger("test")
    install_error_handlers(app)
    install_store_error_handler(app)

    @app.get("/boom")
    async def boom():
        raise error

    return app


@pytest.mark.parametrize(("error", "status", "code"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_a_store_error_answers_its_status_in_the_error_shape(error, status, code):
    response = TestClient(app_raising(error), raise_server_exceptions=False).get("/boom")
    assert response.status_code == status
    body = response.json()["error"]
    assert body["code"] == code
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
        assert str(error) in body["message"]
    if status == 500:
        assert "something unexpected" not in body["message"]  # details stay in the log

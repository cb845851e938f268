"""An unexpected exception is a clean 500 in the error shape, and the keep-alive connection stays usable.

The real pipeline app, served in-process by uvicorn on loopback, with one endpoint's work replaced by a bug; one
httpx connection carries the failing request and the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from nimrag.pipeline.app import create_app
from nimrag.pipeline.settings import PipelineSettings
from tests.conftest import free_port


@pytest.fixture
def broken_pipeline(tmp_path) -> Iterator[str]:
    app = create_app(PipelineSettings(data_path=tmp_path))

    def bug():
        raise ZeroDivisionError("a bug in the store")

    app.state.service.store.list = bug  # GET /v1/collections now fails inside its work
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            thread.join(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response``."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_unexpected_error_is_a_clean_500_and_the_connection_stays_usable(broken_pipeline):
    with httpx.Client(base_url=broken_pipeline, timeout=30,
                      limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as client:
        failed = client.get("/v1/collections")
        assert failed.status_code == 500
        assert failed.json() == {"error": {"message": "Internal error; the request id in the logs has the details.",
                                           "type": "internal_server_error", "param": None,
                                           "code": "internal_server_error"}}
        assert failed.headers["x-request-id"]  # it went through the request middleware: logged and counted
        after = client.get("/v1/health/live")
        assert after.status_code == 200
        # The same connection, or else the server said it would close it.
        assert local_port(after) == local_port(failed) or failed.headers.get("connection") == "close"

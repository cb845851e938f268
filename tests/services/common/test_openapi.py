"""The published OpenAPI documents: valid (openapi-spec-validator), every reference resolves, every request body
described, and every error documented in the one error shape that errors.py writes.

The documents come from the real app factories (the models are not loaded: the document does not need them).
"""

from __future__ import annotations

import jsonschema
import orjson
import pytest
import referencing
from openapi_spec_validator import validate
from referencing.jsonschema import DRAFT202012

from services.common.errors import APIError, InternalError, PayloadTooLargeError, error_body

SERVICES = ("embed", "rerank", "llm", "pipeline")
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, dict]:
    from pipeline.app import create_app as pipeline_app
    from pipeline.settings import PipelineSettings
    from services.embed.app import create_app as embed_app
    from services.llm.app import create_app as llm_app
    from services.rerank.app import create_app as rerank_app

    pipeline = pipeline_app(PipelineSettings(data_path=tmp_path_factory.mktemp("openapi-pipeline")))
    apps = {"embed": embed_app(), "rerank": rerank_app(), "llm": llm_app(), "pipeline": pipeline}
    # As served: the JSON /openapi.json sends, not the Python objects.
    return {name: orjson.loads(orjson.dumps(app.openapi())) for name, app in apps.items()}


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def operations(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in METHODS:
                yield path, method, op


def resolver(doc: dict):
    registry = referencing.Registry().with_resource("urn:doc", DRAFT202012.create_resource(doc))
    return registry.resolver(base_uri="urn:doc")


@pytest.mark.parametrize("service", SERVICES)
def test_document_is_valid_and_every_reference_resolves(documents, service):
    doc = documents[service]
    validate(doc)  # the OpenAPI 3.1 meta-schema
    found = list(refs(doc))
    assert found and all(ref.startswith("#/components/schemas/") for ref in found), found
    lookup = resolver(doc)
    for ref in found:
        lookup.lookup(ref)  # raises on a dangling reference
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_response_is_the_error_shape(documents, service):
    for path, method, op in operations(documents[service]):
        errors = {status: r for status, r in op["responses"].items() if not status.startswith("2")}
        assert "500" in errors, (method, path)
        if path.startswith("/v1/health/"):
            assert "401" not in errors  # probes need no key
        for status, response in errors.items():
            assert response["content"] == {"application/json": {"schema": {"$ref":
                                                                 "#/components/schemas/ErrorResponse"}}}, (path, status)
        if "requestBody" in op:
            assert {"400", "413", "422"} <= errors.keys(), (method, path)


@pytest.mark.parametrize("err", [InternalError("boom"), PayloadTooLargeError(10),
                                 APIError("x", param="model", code="model_not_found")])
def test_error_schema_matches_what_errors_py_writes(documents, err):
    doc = documents["embed"]
    schema = {"$ref": "#/components/schemas/ErrorResponse", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(orjson.loads(error_body(err)))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({"detail": [{"msg": "FastAPI's shape"}]})


@pytest.mark.parametrize(("service", "path", "model"), [
    ("embed", "/v1/embeddings", "EmbeddingRequest"),
    ("rerank", "/v1/ranking", "RankingRequest"),
    ("rerank", "/v1/rerank", "RerankRequest"),
    ("llm", "/v1/chat/completions", "ChatCompletionRequest"),
    ("llm", "/v1/completions", "CompletionRequest"),
    ("llm", "/tokenize", "TokenizeRequest"),
    ("pipeline", "/v1/search", "SearchRequest"),
    ("pipeline", "/v1/generate", "GenerateRequest"),
    ("pipeline", "/v1/collections", "CreateCollection"),
])
def test_json_bodies_reference_their_model(documents, service, path, model):
    doc = documents[service]
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    assert doc["components"]["schemas"][model]["type"] == "object"


def test_every_pipeline_body_is_described(documents):
    for path, method, op in operations(documents["pipeline"]):
        if method in ("post", "put"):
            assert "requestBody" in op, (method, path)


def test_streaming_endpoints_document_server_sent_events(documents):
    for service, path in [("llm", "/v1/chat/completions"), ("llm", "/v1/completions"),
                          ("pipeline", "/v1/generate"), ("pipeline", "/v1/chat/completions")]:
        content = documents[service]["paths"][path]["post"]["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= content.keys()


def test_metrics_are_documented_as_text(documents):
    content = documents["embed"]["paths"]["/v1/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]


def test_upload_form_is_described(documents):
    doc = documents["pipeline"]
    form = doc["paths"]["/v1/documents"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["documents"]
    assert form["properties"]["documents"] == {"type": "array", "items": {"type": "string", "format": "binary"}}
    data = form["properties"]["data"]
    assert data["type"] == "string" and data["contentMediaType"] == "application/json"
    assert data["contentSchema"] == {"$ref": "#/components/schemas/UploadOptions"}
    options = resolver(doc).lookup(data["contentSchema"]["$ref"]).contents
    assert {"collection_name", "blocking", "split_options"} <= options["properties"].keys()
    split = resolver(doc).lookup(options["properties"]["split_options"]["$ref"]).contents
    assert {"chunk_size", "chunk_overlap"} <= split["properties"].keys()


def test_pipeline_endpoints_that_call_the_services_document_their_failures(documents):
    paths = documents["pipeline"]["paths"]
    for path in ("/v1/search", "/v1/generate", "/v1/chat/completions", "/v1/documents", "/v1/collections"):
        assert {"502", "503", "504"} <= paths[path]["post"]["responses"].keys(), path
    assert "503" not in paths["/v1/documents"]["get"]["responses"]  # reads the local store only

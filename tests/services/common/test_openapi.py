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
from pydantic import ValidationError
from referencing.jsonschema import DRAFT202012

from nimrag.services.common.errors import APIError, InternalError, PayloadTooLargeError, error_body

SERVICES = ("embed", "rerank", "llm", "pipeline")
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, dict]:
    from nimrag.pipeline.app import create_app as pipeline_app
    from nimrag.pipeline.settings import PipelineSettings
    from nimrag.services.embed.app import create_app as embed_app
    from nimrag.services.llm.app import create_app as llm_app
    from nimrag.services.rerank.app import create_app as rerank_app

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
    for service in ("embed", "pipeline"):
        for path in ("/v1/metrics", "/metrics"):  # NIM's path, and where scrapers look by default
            content = documents[service]["paths"][path]["get"]["responses"]["200"]["content"]
            assert list(content) == ["text/plain"], (service, path)


def test_upload_form_is_described(documents):
    doc = documents["pipeline"]
    media = doc["paths"]["/v1/documents"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form = media["schema"]
    assert form["required"] == ["documents"]
    files = form["properties"]["documents"]
    assert files["type"] == "array" and files["minItems"] == 1
    assert files["items"] == {"type": "string", "format": "binary"}
    data = form["properties"]["data"]
    assert data["$ref"] == "#/components/schemas/UploadOptions"
    assert media["encoding"] == {"data": {"contentType": "application/json"}}  # a JSON part, not form-encoded
    options = resolver(doc).lookup(data["$ref"]).contents
    assert {"collection_name", "blocking", "split_options"} <= options["properties"].keys()
    split = resolver(doc).lookup(options["properties"]["split_options"]["$ref"]).contents
    assert {"chunk_size", "chunk_overlap"} <= split["properties"].keys()


def test_pipeline_endpoints_that_call_the_services_document_their_failures(documents):
    paths = documents["pipeline"]["paths"]
    for path in ("/v1/search", "/v1/generate", "/v1/chat/completions", "/v1/documents", "/v1/collections"):
        assert {"502", "503", "504"} <= paths[path]["post"]["responses"].keys(), path
    # reads the store only: 503 (a Milvus server down) but never the services' 502/504
    assert not {"502", "504"} & paths["/v1/documents"]["get"]["responses"].keys()
    assert "503" in paths["/v1/documents"]["get"]["responses"]


def schema_validator(doc: dict, model: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{model}", "components": doc["components"]},
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def request_model(name: str):
    import nimrag.pipeline.protocol
    import nimrag.services.embed.protocol
    import nimrag.services.llm.protocol
    import nimrag.services.rerank.protocol

    for module in (nimrag.services.llm.protocol, nimrag.services.embed.protocol, nimrag.services.rerank.protocol,
                   nimrag.pipeline.protocol):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(name)


Q = [{"role": "user", "content": "Hi"}]
# (service, model, body, refused by): what the document refuses is refused by validation ("pydantic": a 422) or by
# the serving layer ("service": its 400, tested against the running services in tests/services and tests/pipeline).
REFUSED = [
    ("llm", "ChatCompletionRequest", {"messages": [{"role": "user"}]}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": [{"role": "tool", "content": None}]}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "top_logprobs": 2}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "logprobs": False, "top_logprobs": 2}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "stop": ["a", ""]}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "stop": ""}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "guided_choice": ["a", ""]}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "nvext": {"guided_choice": [""]}}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "response_format": {"type": "json_schema"}}, "pydantic"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "stream_options": {"include_usage": True}}, "service"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "n": 9}, "service"),  # NIMRAG_LLM_MAX_N: 8
    ("llm", "ChatCompletionRequest", {"messages": Q, "stop": [str(i) for i in range(17)]}, "service"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "logit_bias": {"x": 1}}, "service"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "guided_regex": "("}, "service"),
    ("llm", "CompletionRequest", {"prompt": []}, "pydantic"),
    ("llm", "CompletionRequest", {"prompt": [[1], []]}, "pydantic"),
    ("llm", "CompletionRequest", {"prompt": ""}, "service"),
    ("llm", "CompletionRequest", {"prompt": [-1]}, "service"),
    ("llm", "CompletionRequest", {"prompt": [1, 2], "echo": True}, "service"),
    ("llm", "CompletionRequest", {"prompt": ["a"] * 33}, "service"),  # NIMRAG_LLM_MAX_PROMPTS: 32
    ("llm", "TokenizeRequest", {}, "pydantic"),
    ("llm", "TokenizeRequest", {"prompt": "a", "messages": Q}, "pydantic"),
    ("embed", "EmbeddingRequest", {"input": []}, "service"),
    ("embed", "EmbeddingRequest", {"input": " \t\x1c"}, "service"),
    ("embed", "EmbeddingRequest", {"input": ["a", ""]}, "service"),
    ("embed", "EmbeddingRequest", {"input": [[1, 2]]}, "service"),
    ("embed", "EmbeddingRequest", {"input": ["a", None]}, "service"),
    ("rerank", "RankingRequest", {"query": {"text": " "}, "passages": [{"text": "a"}]}, "service"),
    ("rerank", "RankingRequest", {"query": {"text": "q"}, "passages": []}, "service"),
    ("rerank", "RerankRequest", {"query": "q", "documents": ["a", "\u3000"]}, "service"),
    ("pipeline", "SearchRequest", {}, "pydantic"),
    ("pipeline", "SearchRequest", {"query": "  "}, "pydantic"),
    ("pipeline", "SearchRequest", {"query": "q", "collection_names": [f"c{i}" for i in range(6)]}, "service"),
    ("pipeline", "SearchRequest", {"query": "q", "enable_reranker": False, "confidence_threshold": 0.5}, "service"),
    ("pipeline", "GenerateRequest", {"messages": Q, "stop": ""}, "pydantic"),
    ("pipeline", "GenerateRequest", {"messages": Q, "enable_guardrails": True, "guardrails": {"enabled": False}},
     "service"),
    ("llm", "ChatCompletionRequest", {"messages": Q, "repetition_penalty": 5e-324}, "service"),  # 0 as a float32
]
ACCEPTED = [
    ("llm", "ChatCompletionRequest", {"messages": [{"role": "assistant"}, *Q, {"role": "user", "content": [
        {"type": "text", "text": "x"}]}], "logprobs": True, "top_logprobs": 2, "stop": "END", "n": 8}),
    ("llm", "ChatCompletionRequest", {"messages": Q, "top_logprobs": None, "stream": True,
                                      "stream_options": {"include_usage": True}, "logit_bias": {"42": -1}}),
    ("llm", "ChatCompletionRequest", {"messages": Q, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"type": "object"}}}, "guided_regex": "[a-z]+"}),
    ("llm", "CompletionRequest", {"prompt": [[1, 2], [3]], "echo": False}),
    ("llm", "CompletionRequest", {"prompt": ["a", "b"], "echo": True}),
    ("llm", "TokenizeRequest", {"prompt": "a", "messages": None}),
    ("llm", "TokenizeRequest", {"messages": Q}),
    ("embed", "EmbeddingRequest", {"input": ["a", " b "], "dimensions": 384}),
    ("rerank", "RerankRequest", {"query": "q", "documents": ["a", {"text": "b"}]}),
    ("pipeline", "SearchRequest", {"messages": Q, "confidence_threshold": 0.5}),
    ("pipeline", "GenerateRequest", {"messages": Q, "stop": "END", "enable_reranker": False}),
    ("pipeline", "GenerateRequest", {"messages": Q, "enable_guardrails": True, "guardrails": {"config_id": "x"}}),
    ("pipeline", "ChatRequest", {"messages": Q, "enable_guardrails": False, "guardrails": {"enabled": False}}),
]


@pytest.mark.parametrize(("service", "model", "body", "by"), REFUSED)
def test_the_schema_refuses_what_validation_refuses(documents, service, model, body, by):
    assert not schema_validator(documents[service], model).is_valid(body)
    if by == "pydantic":
        with pytest.raises(ValidationError):
            request_model(model).model_validate(body)


@pytest.mark.parametrize(("service", "model", "body"), ACCEPTED)
def test_the_schema_accepts_what_validation_accepts(documents, service, model, body):
    schema_validator(documents[service], model).validate(body)
    request_model(model).model_validate(body)


def test_documents_publish_the_running_settings_limits(documents):
    from nimrag.services.embed.app import create_app as embed_app
    from nimrag.services.embed.settings import EmbedSettings

    n = documents["llm"]["components"]["schemas"]["ChatCompletionRequest"]["properties"]["n"]
    assert n["maximum"] == 8 and n["x-nimrag-set-by"] == {"maximum": "NIMRAG_LLM_MAX_N"}  # the default, not le=128
    doc = orjson.loads(orjson.dumps(embed_app(EmbedSettings(max_inputs=7, max_chars=100)).openapi()))
    texts = doc["components"]["schemas"]["EmbeddingRequest"]["properties"]["input"]["anyOf"][1]
    assert texts["maxItems"] == 7 and texts["items"]["maxLength"] == 100
    assert documents["embed"]["components"]["schemas"]["EmbeddingRequest"]["properties"]["input"]["anyOf"][1][
        "maxItems"] == 2048  # the other app's document keeps its own settings
    for document in (doc, *documents.values()):
        assert b"x-nimrag-setting-limits" not in orjson.dumps(document)  # every marker was replaced

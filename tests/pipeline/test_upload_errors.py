"""Uploads the pipeline refuses, over real HTTP: a form it cannot read, too many files, an oversized field, names
with control characters, two files of one name; and files that would inflate beyond the parsing limits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from nimrag.pipeline.loaders import MIB
from tests.conftest import free_port, start_service
from tests.pipeline.test_loaders import docx_bomb, make_docx

MAX_FILES = 3
MAX_FIELD = 4096
MAX_INFLATED = 4 * MIB


@pytest.fixture(scope="module")
def url(platform, tmp_path_factory) -> Iterator[str]:
    """A pipeline with small upload and parsing limits, embedding with the platform's service."""
    data = tmp_path_factory.mktemp("upload-errors")
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing here needs reranking or the LLM
    svc = start_service("pipeline", data, env={
        "NIMRAG_PIPELINE_DATA_PATH": str(data), "NIMRAG_PIPELINE_RERANK_URL": closed, "NIMRAG_PIPELINE_LLM_URL": closed,
        "NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{platform.ports['embed']}/v1",
        "NIMRAG_PIPELINE_MAX_FILES_PER_UPLOAD": str(MAX_FILES), "NIMRAG_PIPELINE_MAX_FORM_FIELD_BYTES": str(MAX_FIELD),
        # the ratio is tested with the loaders; here a bomb must reach the size checks
        "NIMRAG_PIPELINE_MAX_INFLATED_BYTES": str(MAX_INFLATED), "NIMRAG_PIPELINE_MAX_COMPRESSION_RATIO": "1e6"})
    try:
        yield svc.base_url
    finally:
        svc.stop()


def upload(url: str, files: list[tuple[str, bytes]], collection: str = "uploads",
           options: str | None = None) -> httpx.Response:
    options = options or json.dumps({"collection_name": collection, "blocking": True})
    return httpx.post(url + "/v1/documents", data={"data": options}, files=[("documents", f) for f in files],
                      timeout=120)


def raw_upload(url: str, filename: bytes) -> httpx.Response:
    """One file whose name goes on the wire as given: httpx would percent-encode a NUL."""
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="documents"; filename="' + filename +
            b'"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b0undary--\r\n')
    return httpx.post(url + "/v1/documents", content=body,
                      headers={"Content-Type": "multipart/form-data; boundary=b0undary"})


def refused(response: httpx.Response, code: str, param: str | None = "documents") -> str:
    """The error's message, once it is a 400 of ``code`` in the one error shape."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param), error
    return error["message"]


def sources(url: str, collection: str) -> set[str]:
    listed = httpx.get(url + "/v1/documents", params={"collection_name": collection})
    return {d["source"] for d in listed.json()["documents"]} if listed.status_code == 200 else set()


def test_too_many_files_names_the_limit(url):
    message = refused(upload(url, [(f"{n}.txt", b"text") for n in range(MAX_FILES + 1)]), "too_many_files")
    assert f"at most {MAX_FILES}" in message and "NIMRAG_PIPELINE_MAX_FILES_PER_UPLOAD" in message


def test_an_oversized_options_field(url):
    padded = json.dumps({"collection_name": "uploads", "blocking": True, "pad": "x" * MAX_FIELD})
    message = refused(upload(url, [("a.txt", b"text")], options=padded), "form_field_too_large", "data")
    assert str(MAX_FIELD) in message and "NIMRAG_PIPELINE_MAX_FORM_FIELD_BYTES" in message


@pytest.mark.parametrize("content_type,code", [
    ("multipart/form-data", "invalid_multipart"),  # no boundary
    ("multipart/form-data; boundary=zz", "invalid_multipart"),  # a body that is not that multipart
    ("application/json", "not_multipart"),
    ("application/x-www-form-urlencoded", "not_multipart"),
])
def test_a_form_that_cannot_be_read(url, content_type, code):
    response = httpx.post(url + "/v1/documents", content=b'{"documents": []}', headers={"Content-Type": content_type})
    message = refused(response, code)
    assert "multipart" in message.lower()


def test_options_are_validated_and_audited(url):
    bad = upload(url, [("a.txt", b"text")], options='{"blocking": "maybe"}')
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "blocking"
    twice = httpx.post(url + "/v1/documents", files=[("documents", ("a.txt", b"text")), ("data", ("o.json", b"{}"))])
    refused(twice, "invalid_request_error", "data")


@pytest.mark.parametrize("name", [b"nul\x00byte.txt", b"bell\x07.txt", b"tab\there.txt", b"del\x7f.txt"])
def test_a_name_with_a_control_character_is_refused(url, name):
    refused(raw_upload(url, name), "invalid_document_name")
    assert not any("\x00" in s or "\x07" in s or "\t" in s or "\x7f" in s for s in sources(url, "default"))


def test_deleting_a_name_with_a_control_character_is_refused(url):
    response = httpx.delete(url + "/v1/documents", params={"document_names": ["fine.txt", "nul\x00.txt"]})
    assert "control character" in refused(response, "invalid_document_name", "document_names")


def test_two_files_of_one_name_are_refused_and_neither_is_lost(url):
    message = refused(upload(url, [("same.txt", b"first"), ("other.txt", b"other"), ("same.txt", b"second")],
                             collection="dupes"), "duplicate_document_name")
    assert "'same.txt'" in message and "other.txt" not in message
    assert sources(url, "dupes") == set()  # nothing of the upload was ingested
    kept = upload(url, [("same.txt", b"the first words"), ("other.txt", b"other words")], collection="dupes")
    assert kept.status_code == 200 and sources(url, "dupes") == {"same.txt", "other.txt"}


def test_supported_types(url):
    response = httpx.get(url + "/v1/supported-types")
    assert response.status_code == 200, response.text
    types = response.json()["types"]
    assert types[".pdf"] == "application/pdf" and types[".docx"].endswith("wordprocessingml.document")


def test_bombs_fail_with_the_reason_and_a_normal_docx_is_ingested(url):
    reply = upload(url, [("bomb.docx", docx_bomb(64)), ("liar.docx", docx_bomb(64, declared_document_bytes=4096)),
                         ("report.docx", make_docx())], collection="bombs")
    assert reply.status_code == 200, reply.text
    files = {f["source"]: f for f in reply.json()["result"]["files"]}
    assert files["report.docx"]["status"] == "added" and files["report.docx"]["chunks"] >= 1
    assert files["bomb.docx"]["status"] == "failed"
    assert files["bomb.docx"]["reason"].startswith(f"inflates beyond {MAX_INFLATED // MIB} MiB: ")
    assert files["liar.docx"]["status"] == "failed" and "CRC" in files["liar.docx"]["reason"]
    assert sources(url, "bombs") == {"report.docx"}

"""No request field silently ignored, over real HTTP: every row of the LLM's unsupported-field tables is a 400
naming the field unless its value asks for nothing, and any other unknown field is named back in a header."""

from __future__ import annotations

import httpx
import pytest

from nimrag.services.llm.protocol import CHAT_UNSUPPORTED, COMPLETION_UNSUPPORTED, TOKENIZE_UNSUPPORTED
from tests.services.field_audit import harmless_bodies, named_back, refused_cases

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "tokenize": "/tokenize"}
BASES = {"chat": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
         "completions": {"prompt": "Hi", "max_tokens": 1},
         "tokenize": {"prompt": "Hi"}}
TABLES = {"chat": CHAT_UNSUPPORTED, "completions": COMPLETION_UNSUPPORTED, "tokenize": TOKENIZE_UNSUPPORTED}
REFUSED = [case for endpoint, table in TABLES.items() for case in refused_cases(table, BASES[endpoint], endpoint)]


def post(base_url: str, endpoint: str, body: dict) -> httpx.Response:
    return httpx.post(base_url + PATHS[endpoint], json=body, timeout=60)


@pytest.mark.parametrize("case,endpoint,body,param", REFUSED, ids=[c[0] for c in REFUSED])
def test_unsupported_field_is_a_400_naming_it(llm_service, case, endpoint, body, param):
    r = post(llm_service.base_url, endpoint, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_field", error
    assert f"'{param}'" in error["message"]


def test_the_tables_cover_the_fields_other_apis_define():
    for name in ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "guided_grammar",
                 "nvext.guided_grammar", "guided_decoding_backend", "min_tokens", "messages[].tool_calls",
                 "messages[].tool_call_id", "audio", "modalities", "prediction", "reasoning_effort",
                 "web_search_options", "store", "chat_template_kwargs"):
        assert name in CHAT_UNSUPPORTED, name
    assert {"suffix", "prompt_embeds", "min_tokens", "nvext.min_tokens"} <= set(COMPLETION_UNSUPPORTED)


@pytest.mark.parametrize("endpoint", list(TABLES))
def test_values_that_ask_for_nothing_are_served(llm_service, endpoint):
    for body in harmless_bodies(TABLES[endpoint], BASES[endpoint]):
        body = {**body, "stream": True} if endpoint != "tokenize" else body  # stream_options needs a stream
        r = post(llm_service.base_url, endpoint, body)
        assert r.status_code == 200, r.text
        assert named_back(r) == set(), "harmless values are not 'ignored'"


def test_unknown_fields_are_served_and_named_back_with_their_path(llm_service):
    body = {"messages": [{"role": "user", "content": "Hi", "mood": "calm"},
                         {"role": "user", "content": [{"type": "text", "text": "there", "cache_control": {}}]}],
            "max_tokens": 1, "frobnicate": 1, "nvext": {"zzz": True},
            "response_format": {"type": "json_object", "strictness": "high"}}
    r = post(llm_service.base_url, "chat", body)
    assert r.status_code == 200, r.text
    assert named_back(r) == {"frobnicate", "messages[0].mood", "messages[1].content[0].cache_control",
                             "nvext.zzz", "response_format.strictness"}
    streamed = post(llm_service.base_url, "completions", {"prompt": "Hi", "max_tokens": 1, "stream": True,
                                                          "stream_options": {"fancy": 1}, "echo_all": 2})
    assert streamed.status_code == 200 and named_back(streamed) == {"stream_options.fancy", "echo_all"}
    assert "ignored unknown request fields" in llm_service.wait_for_log("ignored unknown request fields")
    assert named_back(post(llm_service.base_url, "chat", BASES["chat"])) == set()  # nothing carried over

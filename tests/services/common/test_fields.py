"""The field audit: unsupported fields refused by path pattern (nested models, lists, dicts), harmless values let
through, every other unknown field named back, and the header that names them safe to send."""

from __future__ import annotations

import logging

import pytest

from nimrag.services.common.body import parse_json_text
from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.common.fields import (
    RequestModel,
    Unsupported,
    audit_fields,
    ignored_fields_var,
    ignored_header_value,
)


class Part(RequestModel):
    text: str


class Message(RequestModel):
    role: str
    content: str | list[Part] = ""


class Options(RequestModel):
    top_k: int | None = None


class Body(RequestModel):
    unsupported_fields = {
        "tools": Unsupported("no tools", harmless=([],)),
        "tool_choice": Unsupported("no tools", harmless=("none",)),
        "options.grammar": Unsupported("no grammars"),
        "messages[].tool_calls": Unsupported("no tools", harmless=([],)),
        "messages[].content[].cache": Unsupported("no caching"),
        "named{}.secret": Unsupported("no secrets"),
        "modality": Unsupported("text only", harmless_if=lambda v: isinstance(v, list) and set(v) == {"text"}),
    }

    messages: list[Message] = []
    options: Options | None = None
    named: dict[str, Options] = {}


def audit(body: dict) -> list[str]:
    return audit_fields(Body.model_validate(body))


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"options": {"grammar": "root ::= x"}}, "options.grammar"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "tool_calls": [{}]}]}, "messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": [{"text": "a"}, {"text": "b", "cache": 1}]}]},
     "messages[0].content[1].cache"),
    ({"named": {"a": {"top_k": 1}, "b": {"secret": "x"}}}, "named.b.secret"),
    ({"modality": ["text", "image"]}, "modality"),
])
def test_unsupported_fields_are_refused_by_their_path(body, param):
    with pytest.raises(InvalidRequestError) as err:
        audit(body)
    assert err.value.param == param and err.value.code == "unsupported_field" and err.value.status_code == 400
    assert f"'{param}'" in err.value.message


def test_values_that_ask_for_nothing_pass_and_are_not_named():
    body = {"tools": [], "tool_choice": "none", "options": {"grammar": None}, "modality": ["text", "text"],
            "messages": [{"role": "assistant", "tool_calls": [], "content": [{"text": "a", "cache": None}]}]}
    assert audit(body) == []


def test_unknown_fields_are_named_with_their_full_path():
    body = {"temperature_x": 1, "options": {"top_k": 2, "top_q": 3},
            "messages": [{"role": "user"}, {"role": "user", "weight": 2, "content": [{"text": "a", "kind": 1}]}],
            "named": {"a": {"other": 1}}}
    assert sorted(audit(body)) == sorted(["temperature_x", "options.top_q", "messages[1].weight",
                                          "messages[1].content[0].kind", "named.a.other"])


def test_a_pattern_of_one_model_does_not_match_a_field_of_the_same_name_elsewhere():
    # "tools" is refused at the top level only; inside options it is just an unknown field.
    assert audit({"options": {"tools": [1]}}) == ["options.tools"]


def test_header_value_replaces_unsafe_characters_and_is_bounded():
    # Names are client text: no CR/LF (header injection), no spaces, no non-ASCII reach the header.
    assert ignored_header_value(["a.b[0]", "x\r\ny: z", "ünï"]) == b"a.b[0], x??y:?z, ?n?"
    long = ignored_header_value([f"field{i}" for i in range(500)], limit=100)
    assert len(long) == 100 and long.endswith(b"...")


def test_parsing_refuses_unsupported_and_reports_ignored_fields(caplog):
    holder: list[str] = []
    token = ignored_fields_var.set(holder)
    try:
        with caplog.at_level(logging.WARNING, logger="nimrag.fields"):
            parse_json_text(b'{"messages": [{"role": "user", "mood": "calm"}], "extra": 1}', Body)
        with pytest.raises(InvalidRequestError) as err:
            parse_json_text(b'{"tools": [{"type": "function"}]}', Body)
    finally:
        ignored_fields_var.reset(token)
    assert holder == ["extra", "messages[0].mood"]  # the top level first, then inside its fields
    assert err.value.param == "tools"
    assert [r.ignored_fields for r in caplog.records] == [holder]

"""Policy validation: each kind of broken policy is refused with a message that names the file and says what is
wrong; valid policies (and the shipped default) pass. NeMo Guardrails parses them for real; no service is called."""

from __future__ import annotations

import pytest

from nimrag.guardrails.policy_yaml import MAX_ALIAS_NODES, MAX_DEPTH
from nimrag.guardrails.runtime import DEFAULT_POLICY_DIR, Endpoints, read_policy_dir
from nimrag.guardrails.store import policy_description
from nimrag.guardrails.validation import MAX_FILE_BYTES, MAX_FILES, validate_policy
from tests.guardrails.policies import (
    BILLION_LAUGHS,
    COLANG,
    CONFIG,
    DEEP_BLOCK_YAML,
    DEEP_FLOW_YAML,
    SELF_CONTAINED_YAML,
)

ENDPOINTS = Endpoints(llm_url="http://127.0.0.1:9/v1", llm_model="test-llm", embed_url="http://127.0.0.1:9/v1",
                      embed_model="test-embed")

VALID = {"config.yml": CONFIG, "rails.co": COLANG}
SELF_CHECK = CONFIG.replace("      - refuse secrets\n", "      - self check input\n")
PROMPTS = 'prompts:\n  - task: self_check_input\n    content: "Block this? {{ user_input }} Answer Yes or No."\n'


def changed(**files: str | None) -> dict[str, str]:
    """VALID with some files replaced, added, or (None) removed; '__' in a keyword stands for '.'."""
    result = dict(VALID)
    for key, text in files.items():
        name = key.replace("__", ".")
        if text is None:
            result.pop(name, None)
        else:
            result[name] = text
    return result


INVALID = {
    "bad YAML": (changed(config__yml=CONFIG + "  output: [unclosed\n"), ["config.yml, line", "invalid YAML"]),
    "YAML that is not a mapping": (changed(config__yml="- just\n- a list\n"), ["config.yml must be a YAML mapping"]),
    "unknown flow": (changed(config__yml=CONFIG + "      - no such flow here\n"),
                     ["config.yml", "`no such flow here`", "no .co file"]),
    "Python file": (changed(actions__py="def act():\n    return 1\n"), ["actions.py", "Python",
                                                                       "GUARDRAILS_ALLOW_PYTHON"]),
    "config.py": (changed(config__py="def init(app):\n    pass\n"), ["config.py", "Python"]),
    "missing prompt for self check input": (changed(config__yml=SELF_CHECK),
                                            ["self_check_input", "prompt template", "prompts.yml"]),
    "bad Colang": (changed(broken__co="define flow broken\n  user said hi\n    bot\n  ~~ what is this\n"),
                   ["broken.co, line 2: Colang syntax error"]),
    "model served elsewhere": (changed(config__yml="models:\n  - type: main\n    engine: openai\n    model: gpt-4o\n"
                                       + CONFIG), ["config.yml", "gpt-4o", "test-llm"]),
    "model host in a policy": (changed(config__yml="models:\n  - type: main\n    engine: openai\n    model: test-llm\n"
                                       "    parameters:\n      base_url: http://evil.example/v1\n" + CONFIG),
                               ["base_url"]),
    "no config.yml": (changed(config__yml=None), ["config.yml is missing"]),
    "file in a folder": (changed(**{"sub/extra__co": COLANG}), ["sub/extra.co", "flat"]),
    "hidden file": (changed(**{"__hidden__co": COLANG}), [".hidden.co", "file name"]),
    "other file type": (changed(notes__txt="hello"), ["notes.txt", "neither YAML"]),
    "file too large": (changed(big__co="#" * (MAX_FILE_BYTES + 1)), ["big.co", f"at most {MAX_FILE_BYTES} bytes"]),
    "too many files": ({**VALID, **{f"f{i}.co": "" for i in range(MAX_FILES)}}, [f"at most {MAX_FILES}"]),
    "unknown phone region": (changed(config__yml=CONFIG + "nimrag:\n  phone_regions: [GB, XX]\n"),
                             ["config.yml: nimrag.phone_regions: ['XX'] are not regions libphonenumber knows"]),
    "YAML nested too deep, flow style": (changed(config__yml=CONFIG + DEEP_FLOW_YAML),
                                         ["config.yml, line 10", f"nested more than {MAX_DEPTH} levels"]),
    "YAML nested too deep, block style": (changed(prompts__yml=DEEP_BLOCK_YAML),
                                          [f"prompts.yml, line {MAX_DEPTH + 1}", f"more than {MAX_DEPTH} levels"]),
    "billion laughs": (changed(config__yml=CONFIG + BILLION_LAUGHS),
                       ["config.yml, line", "invalid YAML", f"aliases expand the document by more than "
                                                            f"{MAX_ALIAS_NODES} nodes"]),
    "YAML that contains itself": (changed(config__yml=CONFIG + SELF_CONTAINED_YAML),
                                  ["config.yml, line 10", "*loop is inside its own anchor"]),
}


@pytest.mark.parametrize("files, expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_policies_are_refused_with_a_message_saying_why(files: dict[str, str], expected: list[str]):
    problems = validate_policy(files, ENDPOINTS, allow_python=False)
    assert problems, "accepted an invalid policy"
    text = " ".join(problems)
    for needle in expected:
        assert needle.lower() in text.lower(), f"{needle!r} not in {problems}"
    assert all(len(p) < 700 for p in problems)


VALID_POLICIES = {
    "custom flow": VALID,
    "self check input with its prompt": changed(config__yml=SELF_CHECK, prompts__yml=PROMPTS),
    "our own models named": changed(config__yml="models:\n  - type: main\n    engine: openai\n    model: test-llm\n"
                                    + CONFIG),
    "shipped default": read_policy_dir(DEFAULT_POLICY_DIR),
    "YAML nested to the limit": changed(config__yml=CONFIG + "deep: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
                                        + "\n"),
    "anchors reused": changed(config__yml=CONFIG + "base: &base {tone: brief, language: en}\n"
                              + "".join(f"variant{i}: {{<<: *base, name: v{i}}}\n" for i in range(50))),
}


@pytest.mark.parametrize("files", VALID_POLICIES.values(), ids=VALID_POLICIES.keys())
def test_valid_policies_pass(files: dict[str, str]):
    assert validate_policy(files, ENDPOINTS, allow_python=False) == []


def test_python_is_accepted_when_the_operator_allows_it():
    files = changed(actions__py="def act():\n    return 1\n")
    assert validate_policy(files, ENDPOINTS, allow_python=True) == []


def test_total_size_limit():
    files = changed(big__co="#" * 3000)
    assert any("add up to" in p for p in validate_policy(files, ENDPOINTS, False, max_policy_bytes=2048))


@pytest.mark.parametrize("text", [DEEP_FLOW_YAML, DEEP_BLOCK_YAML, BILLION_LAUGHS, SELF_CONTAINED_YAML],
                         ids=["deep flow", "deep block", "billion laughs", "contains itself"])
def test_a_listing_describes_pathological_yaml_without_failing(text: str):
    assert policy_description({"config.yml": "# A policy.\n" + text}) == "A policy."

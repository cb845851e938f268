"""Check a policy before it is stored: every problem found, each a sentence that names the file and says what is
wrong. Cheap checks first (names, sizes, Python files, YAML); NeMo Guardrails only sees a policy that passes them.
Never raises: whatever NeMo throws becomes a problem."""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from nimrag.guardrails import runtime
from nimrag.guardrails.policy_yaml import load_yaml
from nimrag.guardrails.runtime import Endpoints, PolicyError, load_policy

MAX_FILES = 32
MAX_FILE_BYTES = 256 * 1024
DEFAULT_MAX_POLICY_BYTES = 1024 * 1024
FILE_NAME = re.compile(runtime.FILE_NAME)
YAML_SUFFIXES = (".yml", ".yaml")
POLICY_SUFFIXES = (*YAML_SUFFIXES, ".co")
MAX_MESSAGE_CHARS = 600  # a NeMo message can quote a whole file: keep each problem readable
# NeMo's messages, reworded to say which file to fix.
REWORDINGS = [
    (re.compile(r"^.*?Error parsing line (\d+) in ([^:\s]+): (.*)$"), r"\2, line \1: Colang syntax error: \3"),
    (re.compile(r"^The provided (\w+) rail flow (`[^`]*`) does not exist"),
     r"config.yml: rails.\1.flows names \2, which no .co file of the policy (nor nimrag's library) defines"),
    (re.compile(r"^config: (Value error, )?"), "config.yml: "),
    (re.compile(r"(Missing a `\w+` prompt template.*)$"), r"\1 Add it under 'prompts:' in prompts.yml."),
]


def validate_policy(files: Mapping[str, str], endpoints: Endpoints, allow_python: bool,
                    max_policy_bytes: int = DEFAULT_MAX_POLICY_BYTES) -> list[str]:
    """The policy's problems; empty when it is valid (NeMo parsed it and built rails from it)."""
    problems = check_layout(files, allow_python, max_policy_bytes)
    if problems:
        return problems
    problems = check_yaml(files)
    if problems:
        return problems
    return check_with_nemo(files, endpoints, allow_python)


def check_layout(files: Mapping[str, str], allow_python: bool, max_policy_bytes: int) -> list[str]:
    if not files:
        return ["The policy has no files: it needs at least config.yml."]
    if len(files) > MAX_FILES:
        return [f"The policy has {len(files)} files; at most {MAX_FILES} are allowed."]
    problems = []
    if "config.yml" not in files:
        problems.append("config.yml is missing: every policy needs one (models, rails, instructions).")
    total = 0
    for name, text in files.items():
        size = len(text.encode("utf-8"))
        total += size
        problems += _name_problems(name, allow_python)
        if size > MAX_FILE_BYTES:
            problems.append(f"{name} is {size} bytes; a policy file may have at most {MAX_FILE_BYTES} bytes.")
    if total > max_policy_bytes:
        problems.append(f"The policy's files add up to {total} bytes; at most {max_policy_bytes} are allowed.")
    return problems


def _name_problems(name: str, allow_python: bool) -> list[str]:
    if "/" in name or "\\" in name:
        return [f"'{name}' is in a folder: a policy is flat (config.yml, prompts.yml, *.co side by side)."]
    if not FILE_NAME.fullmatch(name):
        return [f"'{name}' is not an allowed file name: use up to 100 letters, digits, '_', '.', '-', not "
                "starting with a dot."]
    if name.endswith(".py"):
        if allow_python:
            return []
        return [f"{name} is Python code, which uploaded policies may not carry (the pipeline would run it); an "
                "operator can allow it with NIMRAG_PIPELINE_GUARDRAILS_ALLOW_PYTHON=true."]
    if not name.endswith(POLICY_SUFFIXES):
        return [f"{name} is neither YAML (.yml) nor Colang (.co): a policy holds only config.yml, prompts.yml and "
                "*.co files."]
    return []


def check_yaml(files: Mapping[str, str]) -> list[str]:
    problems = []
    for name in sorted(files):
        if not name.endswith(YAML_SUFFIXES):
            continue
        try:
            document = load_yaml(files[name])
        except yaml.YAMLError as exc:
            problems.append(_yaml_problem(name, exc))
            continue
        if document is not None and not isinstance(document, dict):
            problems.append(f"{name} must be a YAML mapping (key: value lines), not a {type(document).__name__}.")
    return problems


def _yaml_problem(name: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    return f"{name}{where}: invalid YAML: {what or exc}."


def check_with_nemo(files: Mapping[str, str], endpoints: Endpoints, allow_python: bool) -> list[str]:
    """Parse with NeMo Guardrails and build the rails (flows, prompts, models resolved; no LLM call). Python
    files, which only an operator setting lets through, are imported while the rails are built."""
    from pydantic import ValidationError

    try:
        load_policy(files, endpoints, allow_python=allow_python)
    except PolicyError as exc:
        return [_reworded(p) for p in exc.problems] or [_reworded(str(exc))]
    except ValidationError as exc:
        return [_pydantic_problem(error) for error in exc.errors(include_url=False)]
    except Exception as exc:  # noqa: BLE001 - NeMo raises plain exceptions for Colang syntax; all mean "invalid"
        return [_nemo_problem(exc)]
    return []


def _pydantic_problem(error: dict) -> str:
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    location = ".".join(str(p) for p in error.get("loc", ()))
    return _reworded(f"config.yml{f' ({location})' if location else ''}: {message}")


def _nemo_problem(exc: Exception) -> str:
    """NeMo's message, with the cause's when it wraps one (ColangParsingError wraps the parser's error)."""
    message = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in message:
        message += f" ({str(cause).strip()})"
    return _reworded(message)


def _reworded(message: str) -> str:
    message = " ".join(message.split())
    for pattern, replacement in REWORDINGS:
        message = pattern.sub(replacement, message, count=1)
    return _short(message)


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS - 1] + "…"

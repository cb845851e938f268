"""docs/troubleshooting.md names only errors the code gives, and every error code the code gives: the error codes
are read from the sources (``code=`` arguments, ``code`` defaults and assignments, error types), the start-up
messages matched against the sources' strings, the exit codes against nimrag.errors.Exit."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from nimrag.errors import Exit
from tests.conftest import REPO

DOC = REPO / "docs" / "troubleshooting.md"
PACKAGES = ("nimrag", "services", "pipeline", "guardrails")
FORMATTED = "\x00"  # where an f-string has a {value}


def package_trees() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text())


def texts(node: ast.expr, constants: dict[str, str] | None = None) -> Iterator[str]:
    """The strings an expression can be: a constant, an f-string (its values as FORMATTED, but for a module
    constant in ``constants``), either branch of an ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        yield "".join(_piece(v, constants or {}) for v in node.values)
    elif isinstance(node, ast.IfExp):
        yield from texts(node.body, constants)
        yield from texts(node.orelse, constants)


def _piece(value: ast.expr, constants: dict[str, str]) -> str:
    if isinstance(value, ast.Constant):
        return value.value
    if isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) and value.value.id in constants:
        return constants[value.value.id]
    return FORMATTED


def module_constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}


def _code_parameters(trees) -> dict[str, int]:
    """Module-level functions with a positional parameter ``code``: name -> its index (``retry_later(msg, code)``)."""
    found = {}
    for _, tree in trees:
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                if "code" in names:
                    found[node.name] = names.index("code")
    return found


def _code_expressions(node: ast.AST, positional: dict[str, int]) -> list[ast.expr]:
    if isinstance(node, ast.Call):
        found = [k.value for k in node.keywords if k.arg == "code"]
        if isinstance(node.func, ast.Name) and len(node.args) > positional.get(node.func.id, len(node.args)):
            found.append(node.args[positional[node.func.id]])
        return found
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        positional_args = args.posonlyargs + args.args
        defaults = zip(positional_args[len(positional_args) - len(args.defaults):], args.defaults)
        return [d for a, d in [*defaults, *zip(args.kwonlyargs, args.kw_defaults)] if d is not None and a.arg == "code"]
    if isinstance(node, ast.Assign) and any(
            (isinstance(t, ast.Name) and t.id == "code") or (isinstance(t, ast.Attribute) and t.attr == "code")
            for t in node.targets):
        return [node.value]
    return []


@cache
def source_codes() -> frozenset[str]:
    """Every error code the sources give explicitly; an f-string code is a pattern (FORMATTED for the value)."""
    trees = list(package_trees())
    positional = _code_parameters(trees)
    return frozenset(text for _, tree in trees for node in ast.walk(tree)
                     for expression in _code_expressions(node, positional) for text in texts(expression))


@cache
def error_types() -> frozenset[str]:
    """The ``error_type`` of every error class: the code of an error raised without one."""
    return frozenset(text for _, tree in package_trees() for node in ast.walk(tree)
                     if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "error_type"
                                                             for t in node.targets) for text in texts(node.value))


@cache
def source_strings() -> tuple[str, ...]:
    found = []
    for _, tree in package_trees():
        constants = module_constants(tree)
        found += [text for node in ast.walk(tree) if isinstance(node, (ast.Constant, ast.JoinedStr))
                  for text in texts(node, constants)]
    return tuple(found)


def matches(code: str, pattern: str) -> bool:
    return re.fullmatch(".+".join(map(re.escape, pattern.split(FORMATTED))), code) is not None


def table_rows(title: str) -> list[list[str]]:
    """The cells of each row of the table in the section ``## title``."""
    section = DOC.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # past the header and its rule


def doc_codes() -> list[str]:
    return [code for row in table_rows("HTTP errors") for code in re.findall(r"`([^`]+)`", row[0])]


def test_every_code_in_the_doc_is_one_the_code_gives():
    codes = doc_codes()
    assert len(codes) > 40
    given = source_codes() | error_types()
    unknown = [c for c in codes if not any(matches(c, pattern) for pattern in given)]
    assert unknown == [], f"codes in docs/troubleshooting.md that no code answers with: {unknown}"


def test_every_code_the_code_gives_is_in_the_doc():
    codes = doc_codes()
    missing = sorted(p.replace(FORMATTED, "{...}") for p in source_codes() if not any(matches(c, p) for c in codes))
    assert missing == [], f"error codes the code answers with that docs/troubleshooting.md does not explain: {missing}"


def test_the_scan_finds_codes_however_they_are_given():
    assert {"queue_full", "invalid_policy", "model_not_ready", "store_busy", "invalid_grammar"} <= source_codes()
    assert f"{FORMATTED}_unavailable" in source_codes()  # f"{service}_unavailable"
    assert matches("llm_unavailable", f"{FORMATTED}_unavailable") and not matches("_unavailable",
                                                                                  f"{FORMATTED}_unavailable")


def test_start_up_messages_are_the_codes_own_words():
    rows = table_rows("Start-up")
    assert len(rows) > 10
    exits = {int(code) for code in Exit}
    for row in rows:
        message = re.search(r"`([^`]+)`", row[0]).group(1)
        pattern = re.compile(".*?".join(re.escape(piece) for piece in re.split(r"<[^>]+>", message)), re.DOTALL)
        assert any(pattern.search(text) for text in source_strings()), f"no such message in the code: {message!r}"
        assert int(row[1]) in exits, row


def test_the_exit_codes_are_nimrags():
    documented = {int(row[0]) for row in table_rows("Exit codes of `nimrag`")}
    signals = {Exit.INTERRUPTED + 2, Exit.INTERRUPTED + 15}  # SIGINT, SIGTERM
    assert documented == {int(code) for code in Exit if code is not Exit.INTERRUPTED} | signals

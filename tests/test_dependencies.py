"""Every third-party module the packages import is a declared requirement of the install that needs it.

The packages' sources are parsed (not imported), so an import inside a function counts as much as one at the top
of a module: a wheel install must be able to reach every code path its users can.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (the dev extra declares it)
    import tomli as tomllib

# The source folders; each installs as part of the one top-level package, nimrag (nimrag.services, ...: pyproject's
# package-dir). An import of a bare `services`, `pipeline` or `guardrails` would work only in the checkout, so it
# counts as third-party here, and fails as undeclared.
PACKAGES = ("nimrag", "services", "pipeline", "guardrails")
TOP_LEVEL = "nimrag"

# Imports that work only with an extra installed: top-level module -> the extra that must declare it. Everything
# else a package imports must be in `dependencies`.
OPTIONAL_IMPORTS = {
    # the Triton backends' client, imported only when a Triton profile starts (also in the gpu extra)
    "tritonclient": "triton-client",
    "pytriton": "triton",  # `nimrag triton serve`, imported only when it runs
    "langchain_core": "langchain",  # pipeline/langchain.py: the LangChain retriever and chain, imported by no service
    # the Milvus vector store (pipeline/vectorstore/milvus), imported only when NIMRAG_PIPELINE_VECTOR_STORE=milvus
    "pymilvus": "milvus",
    "milvus_lite": "milvus",
    "grpc": "milvus",
    "snowballstemmer": "milvus",
    "redis": "redis",  # the Redis task store, imported only when NIMRAG_PIPELINE_TASK_STORE=redis
}


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in requirements}


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = declared(PROJECT["dependencies"])
EXTRAS = {extra: declared(lines) for extra, lines in PROJECT["optional-dependencies"].items()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _RuntimeImports(ast.NodeVisitor):
    """Absolute imports anywhere in a module, as dotted names (``from a.b import c`` gives ``a.b.c``), except
    those under ``if TYPE_CHECKING:``, which never run."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]


def third_party_imports() -> Iterator[tuple[str, str]]:
    """(dotted module name, "file:line") for every import of a module that is neither stdlib nor ours."""
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            visitor = _RuntimeImports()
            visitor.visit(ast.parse(path.read_text(), filename=str(path)))
            for name, line in visitor.found:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != TOP_LEVEL:
                    yield name, f"{path.relative_to(REPO)}:{line}"


@cache
def _providers() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # reads every installed distribution's file list: once


@cache
def _files_of(distribution: str) -> frozenset[str]:
    return frozenset(str(f) for f in metadata.distribution(distribution).files or ())


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide ``module``, canonical names. A namespace package (opentelemetry)
    is shared by several: the ones holding the longest leading part of the dotted name provide it."""
    candidates = _providers().get(module.partition(".")[0], [])
    if len(candidates) <= 1:
        return {canonicalize_name(d) for d in candidates}
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        stem = "/".join(parts[:length])
        owners = {d for d in candidates if {f"{stem}.py", f"{stem}/__init__.py"} & _files_of(d)}
        if owners:
            return {canonicalize_name(d) for d in owners}
    return set()


def undeclared(imports: list[tuple[str, str]], allowed: set[str]) -> list[str]:
    problems = []
    for module, where in imports:
        providers = distributions_of(module)
        if not providers:
            problems.append(f"{module} ({where}): not installed here, so no distribution is known for it")
        elif not providers & allowed:
            problems.append(f"{module} ({where}): from {', '.join(sorted(providers))}, which is not declared")
    return problems


def test_every_runtime_import_is_a_declared_dependency():
    imports = [(m, w) for m, w in third_party_imports() if m.partition(".")[0] not in OPTIONAL_IMPORTS]
    assert len(imports) > 50  # the sources were found and parsed
    assert undeclared(imports, RUNTIME) == []


def test_optional_imports_are_declared_in_their_extra():
    imports = list(third_party_imports())
    for top, extra in OPTIONAL_IMPORTS.items():
        of_top = [(m, w) for m, w in imports if m.partition(".")[0] == top]
        assert of_top, f"{top} is allow-listed but imported nowhere: drop it from OPTIONAL_IMPORTS"
        assert undeclared(of_top, EXTRAS[extra]) == [], f"declare it in the {extra!r} extra"


def test_the_check_sees_function_level_imports_and_skips_type_checking_ones():
    visitor = _RuntimeImports()
    visitor.visit(ast.parse("import a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import b\n"
                            "else:\n    import c\ndef f():\n    from d.e import g\n"))
    assert [name for name, _ in visitor.found] == ["a", "typing.TYPE_CHECKING", "c", "d.e.g"]
    assert undeclared([("openai", "x.py:1")], {"httpx"}) == ["openai (x.py:1): from openai, which is not declared"]
    assert distributions_of("opentelemetry.sdk.trace") == {"opentelemetry-sdk"}
    assert distributions_of("opentelemetry.trace") == {"opentelemetry-api"}

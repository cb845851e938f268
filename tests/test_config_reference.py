"""docs/configuration.md is what nimrag/config_reference.py makes of the settings classes now, and it names every
environment variable the code reads."""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from nimrag import config_reference as ref
from tests.conftest import REPO

PACKAGES = ("nimrag", "services", "pipeline", "guardrails")
READ_METHODS = {"get", "pop", "setdefault"}


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os") or (isinstance(node, ast.Name) and node.id == "environ")


def _named(node: ast.expr) -> ast.expr | None:
    """The expression naming the variable, for each way of reading one: os.environ.get/pop/setdefault(X),
    os.getenv(X), os.environ[X], X in os.environ."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in READ_METHODS and _is_environ(func.value):
            return node.args[0]
        if (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                isinstance(func, ast.Name) and func.id == "getenv"):
            return node.args[0]
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        return node.slice
    if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) and any(
            _is_environ(c) for c in node.comparators):
        return node.left
    return None


def _texts(node: ast.expr) -> tuple[str, ...] | None:
    """The text of a string constant, or the texts of a tuple or list of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, (ast.Tuple, ast.List)) and all(_texts(e) and len(_texts(e)) == 1 for e in node.elts):
        return tuple(e.value for e in node.elts)
    return None


def string_constants(tree: ast.Module) -> dict[str, tuple[str, ...]]:
    """Module-level ``NAME = "text"`` and ``NAMES = ("a", "b")`` assignments."""
    return {target.id: texts for node in tree.body if isinstance(node, ast.Assign)
            and (texts := _texts(node.value)) for target in node.targets if isinstance(target, ast.Name)}


def _loop_variables(tree: ast.Module, known: dict[str, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    """``for name in NAMES:`` over a constant: each Name node ``name`` inside the loop -> the names it takes."""
    taken: dict[int, tuple[str, ...]] = {}
    for loop in ast.walk(tree):
        if isinstance(loop, ast.For) and isinstance(loop.target, ast.Name) and isinstance(loop.iter, ast.Name) \
                and loop.iter.id in known:
            for node in ast.walk(loop):
                if isinstance(node, ast.Name) and node.id == loop.target.id:
                    taken[id(node)] = known[loop.iter.id]
    return taken


def environment_reads(source: str, constants: dict | None = None) -> Iterator[tuple[str | None, int]]:
    """(variable name, line) of every read of the environment in ``source``; None for a name computed at run time.
    A name held in a module-level constant (of this module or in ``constants``), or a loop over a constant tuple of
    names, is resolved."""
    tree = ast.parse(source)
    known = {**(constants or {}), **string_constants(tree)}
    loops = _loop_variables(tree, known)
    for node in ast.walk(tree):
        named = _named(node)
        if named is None:
            continue
        if isinstance(named, ast.Name) and id(named) in loops:
            names = loops[id(named)]
        elif isinstance(named, ast.Name) and named.id in known:
            names = known[named.id]
        else:
            names = _texts(named) or (None,)
        for name in names:
            yield name, node.lineno


def package_files() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]


def all_reads() -> list[tuple[str | None, str]]:
    """(name or None, "path:line") over the packages; constants resolve across modules (``from x import NAME``)."""
    files = package_files()
    constants: dict[str, tuple[str, ...]] = {}
    for path in files:
        constants.update(string_constants(ast.parse(path.read_text())))
    return [(name, f"{path.relative_to(REPO)}:{line}") for path in files
            for name, line in environment_reads(path.read_text(), constants)]


def test_the_committed_reference_is_current():
    committed = (REPO / "docs" / "configuration.md").read_text()
    current = ref.render()
    if committed != current:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), current.splitlines(True),
                                                 "docs/configuration.md", "generated"))[:40])
        pytest.fail(f"docs/configuration.md is out of date with the settings classes: run "
                    f"`.venv/bin/{ref.UPDATE_COMMAND}` and commit it.\n{diff}")


def test_every_variable_the_code_reads_is_in_the_reference():
    reads = all_reads()
    assert len(reads) > 10  # the sources were found and parsed
    documented = ref.settings_variables() | {v.name for v in ref.OTHER_VARIABLES}
    missing = sorted({f"{name} ({where})" for name, where in reads if name and name not in documented})
    assert missing == [], ("read by the code but not in docs/configuration.md: add each to OTHER_VARIABLES in "
                           f"nimrag/config_reference.py (or make it a setting): {missing}")
    computed = sorted({where for name, where in reads if name is None
                       if where.rpartition(":")[0] not in ref.COMPUTED_READS})
    assert computed == [], ("a variable whose name is computed at run time: say what it reads in COMPUTED_READS "
                            f"(nimrag/config_reference.py): {computed}")


def test_the_hand_kept_tables_list_only_what_the_code_reads():
    reads = all_reads()
    for variable in ref.OTHER_VARIABLES:
        if not variable.library:
            where = {w.rpartition(":")[0] for name, w in reads if name == variable.name}
            assert variable.read_by in where, f"{variable.name} is not read in {variable.read_by} (read in {where})"
    computed_in = {where.rpartition(":")[0] for name, where in reads if name is None}
    assert set(ref.COMPUTED_READS) <= computed_in


def test_variables_profiles_require_are_settings():
    from nimrag.cli import SERVICES, _load

    required = {name for entry in SERVICES.values() if entry.profiles
                for profile in _load(entry.profiles) for name in profile.requires_env}
    assert required  # the Triton profiles need their URL
    assert required <= ref.settings_variables(), required - ref.settings_variables()


def test_unused_fields_are_fields_of_their_service():
    classes = ref.settings_classes()
    for service, fields in ref.UNUSED_FIELDS.items():
        assert set(fields) <= set(classes[service].model_fields), service


def test_the_scan_sees_every_way_of_reading_the_environment():
    source = '''
import os
from os import environ, getenv
NAME = "E"
PAIR = ("I", "J")
os.environ.get("A"); os.getenv("B"); os.environ["C"]; "D" in os.environ; os.environ.pop(NAME)
os.environ.setdefault("F", "1"); getenv("G"); environ.get("H"); os.environ.get(name_of_the_day())
for name in PAIR:
    os.environ.get(name)
env = {**os.environ}  # a copy names no variable
'''
    found = sorted(environment_reads(source), key=lambda item: (item[0] is None, item[0] or ""))
    assert [name for name, _ in found] == ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", None]


# --- rendering ---------------------------------------------------------------------------------------------------

def shared_path() -> Path:
    return Path("/somewhere")


class Toy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOY_")

    mode: Literal["fast", "slow"] = Field("fast", description="How.")
    port: int = Field(8000, ge=1, le=65535, description="Where | which.")
    wait_s: float = Field(2.0, gt=0, description="How long.")
    limit_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="How much.")
    name: str | None = Field(None, min_length=1, description="Who.")
    place: Path = Field(default_factory=shared_path, description="Where to.")
    bare: bool = True


def test_types_bounds_and_defaults_read_as_a_person_writes_them(monkeypatch):
    fields = Toy.model_fields
    assert ref.type_text(fields["mode"].annotation) == "one of `fast`, `slow`"
    assert ref.type_text(fields["name"].annotation) == "string"
    assert [ref.bounds_text(fields[f]) for f in ("port", "wait_s", "limit_bytes", "name", "bare")] == [
        "1 to 65535", "> 0", "≥ 1024", "length ≥ 1", ""]
    assert [ref.default_text(f, fields[f]) for f in ("mode", "wait_s", "limit_bytes", "name", "bare")] == [
        "`fast`", "`2`", "`8388608` (8 MiB)", "unset", "`true`"]
    with pytest.raises(ValueError, match="FACTORY_DEFAULTS"):  # a computed default must say how it reads
        ref.default_text("place", fields["place"])
    monkeypatch.setitem(ref.FACTORY_DEFAULTS, f"{__name__}.shared_path", "`/somewhere`")
    assert ref.default_text("place", fields["place"]) == "`/somewhere`"
    with pytest.raises(ValueError, match=r"TOY_BARE has no description"):
        ref.describe(Toy, "bare")
    assert ref.cell(ref.describe(Toy, "port")) == "Where \\| which."  # a pipe does not split the table cell

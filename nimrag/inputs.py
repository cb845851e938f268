"""The files ``nimrag ingest`` reads and the name each document gets in its collection.

A document is named by its path relative to what was named on the command line, so that two files never share a
name by accident and ingesting the same path again replaces only that document:

- a file: its name (``docs/a/notes.md`` -> ``notes.md``);
- a folder: the path below the folder (``nimrag ingest docs`` -> ``a/notes.md``, ``b/notes.md``);
- a glob: the path below its fixed prefix (``docs/*/notes.md`` -> ``a/notes.md``; ``*.md`` -> ``notes.md``).

Two different files that would still get one name are refused before anything is ingested.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nimrag.errors import CLIError, Exit
from nimrag.pipeline.ingest import checked_document_name
from nimrag.pipeline.loaders import iter_input_paths

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    path: Path
    name: str  # the document's name in the collection
    problem: str | None = None  # why the name cannot be used (the file is reported failed, never sent)


def _naming_root(item: str) -> Path:
    """The folder the names of the files ``item`` expands to are relative to."""
    path = Path(item).expanduser()
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path
    parts = PurePosixPath(os.path.expanduser(item)).parts
    first_pattern = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    return Path(*parts[:first_pattern]) if first_pattern else Path(".")


def _named(path: Path, root: Path) -> InputFile:
    name = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    try:
        return InputFile(path, checked_document_name(name))
    except ValueError as exc:
        return InputFile(path, name, f"cannot be a document name: {exc}")


def named_inputs(items: list[str]) -> list[InputFile]:
    """Every file ``items`` name (see iter_input_paths), each once, with its document name."""
    files: list[InputFile] = []
    seen: set[Path] = set()
    by_name: dict[str, Path] = {}
    for item in items:
        try:
            paths = list(iter_input_paths([item]))
            root = _naming_root(item)
        except FileNotFoundError as exc:
            raise CLIError(str(exc), Exit.USAGE) from None
        for path in paths:
            if path.resolve() in seen:  # named twice (a folder and a file in it): ingested once
                continue
            seen.add(path.resolve())
            named = _named(path, root)
            if named.name in by_name:
                raise CLIError(f"{by_name[named.name]} and {path} would both be named '{named.name}' in the "
                               "collection: name the folder that holds both instead, or ingest them into "
                               "separate collections", Exit.USAGE)
            by_name[named.name] = path
            files.append(named)
    if not files:
        raise CLIError("no files found", Exit.USAGE)
    return files

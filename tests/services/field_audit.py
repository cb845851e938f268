"""Request bodies built from a service's table of unsupported fields (nimrag.services.common.fields), so that every row
of every table is sent over HTTP: each field with a value that asks for something, and all harmless values."""

from __future__ import annotations

import copy
from typing import Any

from nimrag.services.common.fields import Unsupported

# Never a harmless value: a field given it asks for something.
ASKING = "nimrag-test-value"


def place(base: dict, pattern: str, value: Any) -> tuple[dict, str]:
    """A copy of ``base`` with ``value`` at ``pattern`` (``a.b``, ``items[].c``: the first item of a list) and the
    concrete path an error names (``items[0].c``)."""
    body = copy.deepcopy(base)
    node, path = body, []
    *parents, leaf = pattern.split(".")
    for part in parents:
        name = part.removesuffix("[]")
        if part.endswith("[]"):
            node = node[name][0]
            path.append(f"{name}[0]")
        else:
            node = node.setdefault(name, {})
            path.append(name)
    node[leaf] = value
    return body, ".".join([*path, leaf])


def refused_cases(table: dict[str, Unsupported], base: dict, endpoint: str) -> list[tuple[str, str, dict, str]]:
    """(id, endpoint, body, param) for every row: the field set to a value that asks for something."""
    return [(f"{endpoint}:{pattern}", endpoint, *place(base, pattern, ASKING)) for pattern in table]


def harmless_bodies(table: dict[str, Unsupported], base: dict) -> list[dict]:
    """Bodies that between them carry every harmless value of the table, each row's k-th value in the k-th."""
    rows = [(pattern, u.harmless) for pattern, u in table.items() if u.harmless]
    bodies = []
    for k in range(max((len(values) for _, values in rows), default=0)):
        body = base
        for pattern, values in rows:
            body, _ = place(body, pattern, values[min(k, len(values) - 1)])
        bodies.append(body)
    return bodies


def named_back(response) -> set[str]:
    header = response.headers.get("x-nimrag-ignored-fields")
    return set(header.split(", ")) if header else set()

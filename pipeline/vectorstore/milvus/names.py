"""Names and literals Milvus can take: collection names mapped one-to-one, strings quoted inside filter expressions.

A pipeline collection is two Milvus collections, its chunks and its documents. Milvus names allow only letters,
digits and underscores, and must not start with a digit, while pipeline names may hold ``.`` and ``-`` and
start with a digit: letters and digits are kept, ``_`` ``.`` ``-`` become ``_u`` ``_d`` ``_h``, behind a prefix
that says which of the two it is. The mapping is reversible, so listing needs no other record.
"""

from __future__ import annotations

PREFIX = "nimrag"
CHUNKS = "c"
DOCUMENTS = "d"
_ESCAPES = {"_": "_u", ".": "_d", "-": "_h"}
_UNESCAPES = {code[1]: char for char, code in _ESCAPES.items()}


def physical_name(name: str, kind: str) -> str:
    """The Milvus collection holding ``kind`` (CHUNKS or DOCUMENTS) of the pipeline collection ``name``, which
    the caller has validated."""
    return f"{PREFIX}_{kind}_" + "".join(_ESCAPES.get(char, char) for char in name)


def logical_name(physical: str, kind: str) -> str | None:
    """The pipeline name of a Milvus collection of ``kind``; None for a collection that is not one of ours."""
    head = f"{PREFIX}_{kind}_"
    if not physical.startswith(head):
        return None
    encoded, out, position = physical[len(head):], [], 0
    while position < len(encoded):
        char = encoded[position]
        if char != "_":
            out.append(char)
            position += 1
            continue
        decoded = _UNESCAPES.get(encoded[position + 1:position + 2])
        if decoded is None:
            return None
        out.append(decoded)
        position += 2
    return "".join(out) or None


_LITERAL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def literal(value: str) -> str:
    """``value`` as a double-quoted string literal of Milvus's filter grammar: no text a user chose is syntax.
    (Milvus Lite has no filter templating, ``filter_params``, so values go into the expression quoted.)"""
    return '"' + value.translate(_LITERAL_ESCAPES) + '"'


def is_in(field: str, values: list[str]) -> str:
    return f"{field} in [{', '.join(literal(value) for value in values)}]"


def equals(field: str, value: str) -> str:
    return f"{field} == {literal(value)}"

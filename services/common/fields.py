"""No request field is silently dropped.

Every request model derives from :class:`RequestModel`, which keeps the fields it does not declare. After a body
is validated, :func:`audit_fields` sorts them, nested models and lists included:

- a field another API defines (OpenAI, NIM, the RAG Blueprint) that nimrag does not implement yet is listed in
  the top-level model's ``unsupported_fields`` (one table per API, beside its request shapes) and answered with a
  400 that names it, unless its value is one that asks for nothing (``tools: []``, ``tool_choice: "none"``);
- any other undeclared field is ignored, as vLLM does, but named back: one warning log line and the
  ``x-nimrag-ignored-fields`` response header (the middleware adds it).
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from nimrag.services.common.errors import InvalidRequestError

IGNORED_FIELDS_HEADER = "x-nimrag-ignored-fields"
# The bound of every count a request gives an engine: llama.cpp and TensorRT-LLM take 32-bit integers.
INT32_MAX = 2**31 - 1

# One list per request, made by the middleware, filled while the request is parsed; a mutable holder so that it
# survives the context copies of streaming responses and thread pools.
ignored_fields_var: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("ignored_fields",
                                                                                      default=None)
_log = logging.getLogger("nimrag.fields")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\[\]{}$@:+-]")


@dataclass(frozen=True)
class Unsupported:
    """A field defined by another API that nimrag does not implement; ``harmless`` values ask for nothing."""

    reason: str
    harmless: tuple[Any, ...] = ()
    # For harmless values a tuple cannot list, e.g. any list of "text" modalities.
    harmless_if: Callable[[Any], bool] | None = None

    def asks_nothing(self, value: Any) -> bool:
        return (value is None or value in self.harmless or
                (self.harmless_if is not None and self.harmless_if(value)))


class RequestModel(BaseModel):
    """Base of every request body and of the objects inside one: keeps undeclared fields for the audit."""

    model_config = ConfigDict(extra="allow")

    # Dotted paths ("tools", "nvext.guided_grammar", "messages[].tool_calls") to why they are not served.
    unsupported_fields: ClassVar[dict[str, Unsupported]] = {}


class UnsupportedFieldError(InvalidRequestError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"The field '{path}' is not supported by this server: {reason}.", param=path,
                         code="unsupported_field")


def _undeclared(model: BaseModel, pattern: str, path: str):
    """(path pattern, path, value) of every undeclared field in ``model`` and the models inside it."""
    pattern_prefix, path_prefix = (f"{pattern}.", f"{path}.") if path else ("", "")
    for name, value in (model.model_extra or {}).items():
        yield f"{pattern_prefix}{name}", f"{path_prefix}{name}", value
    for name in type(model).model_fields:
        yield from _inside(getattr(model, name), f"{pattern_prefix}{name}", f"{path_prefix}{name}")


def _inside(value: Any, pattern: str, path: str):
    if isinstance(value, BaseModel):
        yield from _undeclared(value, pattern, path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _inside(item, f"{pattern}[]", f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel):
                yield from _undeclared(item, f"{pattern}{{}}", f"{path}.{key}")


def audit_fields(body: BaseModel) -> list[str]:
    """Raise :class:`UnsupportedFieldError` for the first unsupported field asked for; return the ignored ones."""
    table = getattr(type(body), "unsupported_fields", {})
    ignored = []
    for pattern, path, value in _undeclared(body, "", ""):
        unsupported = table.get(pattern)
        if unsupported is None:
            ignored.append(path)
        elif not unsupported.asks_nothing(value):
            raise UnsupportedFieldError(path, unsupported.reason)
    return ignored


def report_ignored(ignored: list[str]) -> None:
    """Name ignored fields back: once in the log, and in the response header of the request being served."""
    if not ignored:
        return
    _log.warning("ignored unknown request fields", extra={"ignored_fields": ignored})
    holder = ignored_fields_var.get()
    if holder is not None:
        holder.extend(f for f in ignored if f not in holder)


def ignored_header_value(ignored: list[str], limit: int = 1024) -> bytes:
    """The header naming ignored fields: names are client text, so anything outside a safe set becomes '?'."""
    value = ", ".join(_UNSAFE.sub("?", name) for name in ignored)
    return (value if len(value) <= limit else value[:limit - 3] + "...").encode("ascii")


def check_fields(body: BaseModel) -> None:
    report_ignored(audit_fields(body))

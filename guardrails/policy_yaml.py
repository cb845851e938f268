"""YAML written by policy authors, loaded with limits on its shape.

PyYAML composes nested collections recursively, so ``"[" * 100000`` ends in a RecursionError, and it shares an
aliased node instead of copying it, so nine lines of aliases (the "billion laughs") load at once as a tree of a
billion nodes that the first walk over it (NeMo's config models, a JSON dump) tries to visit. Both are refused
while the events stream in, before the composer goes deep or anything walks the tree, as a YAML error with the
line where the limit was passed.
"""

from __future__ import annotations

import yaml

MAX_DEPTH = 64  # NeMo's own configs nest under ten levels (rails.output.streaming.enabled is four)
MAX_ALIAS_NODES = 10_000  # nodes that aliases add to the document when expanded (anchors reused a few times)


class YAMLTooComplex(yaml.MarkedYAMLError):
    """A document past MAX_DEPTH or MAX_ALIAS_NODES; handled wherever YAML errors are."""


class _LimitedLoader(yaml.SafeLoader):
    """The safe loader, counting the events as the composer takes them."""

    def __init__(self, stream):
        super().__init__(stream)
        self._open: list[tuple[str | None, int]] = []  # open collections: (anchor, nodes before it)
        self._anchor_nodes: dict[str, int] = {}  # closed anchors: the nodes each stands for, expanded
        self._nodes = 0  # nodes so far, aliases expanded
        self._alias_nodes = 0

    def get_event(self):
        event = super().get_event()
        if isinstance(event, yaml.CollectionStartEvent):
            self._open.append((event.anchor, self._nodes))
            self._nodes += 1
            if len(self._open) > MAX_DEPTH:
                raise YAMLTooComplex(problem=f"collections are nested more than {MAX_DEPTH} levels deep",
                                     problem_mark=event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before = self._open.pop()
            if anchor is not None:
                self._anchor_nodes[anchor] = self._nodes - before
        elif isinstance(event, yaml.ScalarEvent):
            self._nodes += 1
            if event.anchor is not None:
                self._anchor_nodes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            self._expand(event)
        return event

    def _expand(self, alias: yaml.AliasEvent) -> None:
        if any(anchor == alias.anchor for anchor, _ in self._open):
            raise YAMLTooComplex(problem=f"the alias *{alias.anchor} is inside its own anchor: a document "
                                         "that contains itself has no end", problem_mark=alias.start_mark)
        size = self._anchor_nodes.get(alias.anchor, 1)  # an undefined alias: the composer says so next
        self._nodes += size
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise YAMLTooComplex(problem=f"aliases expand the document by more than {MAX_ALIAS_NODES} nodes "
                                         f"(*{alias.anchor} alone stands for {size})", problem_mark=alias.start_mark)


def load_yaml(text: str):
    """``yaml.safe_load``, refusing pathological shapes with YAMLTooComplex (a yaml.YAMLError)."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

"""What flows through ingestion: parsed documents, their pages, and the chunks cut from them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Page:
    number: int | None  # 1-based page number where the format has pages (PDF), else None
    text: str


@dataclass(frozen=True)
class ParsedDocument:
    source: str  # the name the document is known by in its collection (a file name or relative path)
    title: str
    media_type: str  # e.g. "application/pdf", "text/markdown"
    pages: list[Page]
    content_hash: str  # sha256 of the file's bytes: re-ingesting unchanged content does nothing


@dataclass(frozen=True)
class Chunk:
    source: str
    index: int  # position within its document
    text: str
    page: int | None
    start: int  # character offsets of the chunk within its page's text
    end: int
    title: str = ""
    content_hash: str = ""  # sha256 of the chunk text
    metadata: dict = field(default_factory=dict)

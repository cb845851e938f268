"""Turn uploaded or local files (PDF, HTML, Markdown, text, DOCX) into ParsedDocuments.

Parsing is blocking and CPU-bound; callers on an event loop run it in a thread.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import io
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import MappingProxyType

from nimrag.pipeline.documents import Page, ParsedDocument

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 100 * MIB
DEFAULT_MAX_INFLATED_BYTES = 256 * MIB
DEFAULT_MAX_COMPRESSION_RATIO = 100.0
# Small ZIP members are not held to the ratio: a short XML part of repeated markup compresses beyond 100:1 and
# cannot hurt (Apache POI's ZipSecureFile exempts small entries the same way).
RATIO_GRACE_BYTES = MIB
_ZIP_READ_CHUNK = MIB

DOCX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

# Read-only so no caller can change what every other caller accepts.
SUPPORTED_TYPES = MappingProxyType({
    ".pdf": "application/pdf",
    ".html": "text/html",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".rst": "text/x-rst",
    ".docx": DOCX_MEDIA_TYPE,
})


class DocumentError(Exception):
    """A file that cannot become a document; ``reason`` says why, the message names the file too."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UnsupportedTypeError(DocumentError):
    """The file's suffix is not one we parse."""


class BrokenFileError(DocumentError):
    """The file has a supported type but is empty, too large, damaged or has no text."""


@dataclass(frozen=True)
class InflateLimits:
    """What parsing one document may decompress: ``max_bytes`` uncompressed in all (its ZIP members, its PDF
    content streams), and a large ZIP member's uncompressed size at most ``max_ratio`` times its compressed size."""

    max_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    max_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO


class InflateLimitError(BrokenFileError):
    """The file would inflate beyond :class:`InflateLimits` (a decompression bomb, or just too big to parse)."""


def _beyond(source: str, max_bytes: int, detail: str) -> InflateLimitError:
    return InflateLimitError(source, f"inflates beyond {_mib(max_bytes)} MiB: {detail}")


def _mib(size: int) -> str:
    return f"{size / MIB:.4g}"


def media_type_for(source: str) -> str:
    suffix = PurePath(source).suffix.lower()
    if suffix not in SUPPORTED_TYPES:
        shown = suffix or "(no suffix)"
        raise UnsupportedTypeError(source, f"unsupported file type {shown}; supported: {', '.join(SUPPORTED_TYPES)}")
    return SUPPORTED_TYPES[suffix]


def parse_file(path: Path, source: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
               limits: InflateLimits = InflateLimits()) -> ParsedDocument:
    """Parse a local file; ``source`` (default: the file name) is the name the document is known by."""
    path = Path(path)
    source = source or path.name
    media_type_for(source)  # refuse unsupported files before reading them
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _too_large(source, size, max_bytes)
        data = path.read_bytes()
    except OSError as exc:
        raise BrokenFileError(source, f"cannot read: {exc.strerror or exc}") from exc
    return parse_bytes(data, source, max_bytes=max_bytes, limits=limits)


def parse_bytes(data: bytes, source: str, max_bytes: int = DEFAULT_MAX_BYTES,
                limits: InflateLimits = InflateLimits()) -> ParsedDocument:
    """Parse file content (e.g. an API upload); the type comes from the suffix of ``source``."""
    media_type = media_type_for(source)
    if len(data) > max_bytes:
        raise _too_large(source, len(data), max_bytes)
    if not data.strip():
        raise BrokenFileError(source, "empty file")
    title, pages = _PARSERS[media_type](data, source, limits)
    pages = [page for page in pages if page.text.strip()]
    if not pages:
        reason = "no text layer (scanned PDF?)" if media_type == "application/pdf" else "no text"
        raise BrokenFileError(source, reason)
    return ParsedDocument(source=source, title=title or PurePath(source).stem, media_type=media_type,
                          pages=pages, content_hash=hashlib.sha256(data).hexdigest())


def _too_large(source: str, size: int, max_bytes: int) -> BrokenFileError:
    return BrokenFileError(source, f"too large: {size} bytes (limit {max_bytes})")


# --- per-format parsers: (data, source, limits) -> (title or "", pages) ---

def _parse_pdf(data: bytes, source: str, limits: InflateLimits) -> tuple[str, list[Page]]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError

    if b"%PDF-" not in data[:1024]:
        raise BrokenFileError(source, "not a PDF or damaged: no %PDF- header")
    # pypdf raises many exception types (not only PdfReadError) on damaged input.
    try:
        with apply_configuration(**_pypdf_limits(limits.max_bytes)):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise BrokenFileError(source, "encrypted PDF (needs a password)")
            pages = list(_pdf_pages(reader, source, limits.max_bytes))
            title = (reader.metadata.title if reader.metadata else None) or ""
    except BrokenFileError:
        raise
    except LimitReachedError as exc:
        raise _beyond(source, limits.max_bytes, f"pypdf: {exc}") from exc
    except Exception as exc:
        raise BrokenFileError(source, f"not a PDF or damaged: {exc}") from exc
    return str(title).strip(), pages


def _pypdf_limits(max_bytes: int) -> dict[str, int]:
    """pypdf's own limits, per stream (its defaults are 75 MB), no higher than ours for the whole document."""
    per_stream = ("maximum_declared_stream_length", "array_based_stream_maximum_output_length",
                  "zlib_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
                  "brotli_maximum_output_length", "jbig2_maximum_output_length", "image_maximum_buffer_size",
                  "stream_decoding_work_maximum_length")
    return {name: max_bytes for name in per_stream}


def _pdf_pages(reader, source: str, max_bytes: int) -> Iterator[Page]:
    """Each page's text. pypdf keeps every stream it decoded: their sum is what the document inflates to."""
    inflated = 0
    for number, page in enumerate(reader.pages, start=1):
        contents = page.get_contents()  # decoded once here; extract_text reuses it
        inflated += len(contents.get_data()) if contents is not None else 0
        if inflated > max_bytes:
            raise _beyond(source, max_bytes, f"the content of pages 1-{number} takes {_mib(inflated)} MiB")
        yield Page(number, _normalize_newlines(page.extract_text() or ""))


_HTML_DROPPED_TAGS = ("script", "style", "nav", "head", "noscript", "template", "iframe", "svg")
_HTML_BLOCK_TAGS = ("p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "pre",
                    "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr",
                    "figure", "figcaption", "form", "fieldset", "address", "hr")


def _parse_html(data: bytes, source: str, limits: InflateLimits) -> tuple[str, list[Page]]:
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, ProcessingInstruction

    soup = BeautifulSoup(data, "html.parser")  # bytes: bs4 honours <meta charset> and BOMs
    title = _html_title(soup)
    for node in soup.find_all(string=lambda s: isinstance(s, (Comment, Declaration, Doctype, ProcessingInstruction))):
        node.extract()
    for tag in soup.find_all(_HTML_DROPPED_TAGS):
        tag.decompose()
    for tag in soup.find_all(hidden=True):
        tag.decompose()
    # Source line breaks mean nothing in HTML: collapse them so only structure makes newlines.
    for text in soup.find_all(string=True):
        if text.find_parent("pre") is None:
            text.replace_with(re.sub(r"\s+", " ", text))
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_HTML_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return title, [Page(None, _tidy_lines(soup.get_text()))]


def _html_title(soup) -> str:
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and (h1 := soup.find("h1")):
        title = h1.get_text(" ", strip=True)
    return title


def _parse_markdown(data: bytes, source: str, limits: InflateLimits) -> tuple[str, list[Page]]:
    text = _decode_text(data)
    outside_code = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)  # "# comment" in code
    heading = re.search(r"^#[ \t]+(.+?)[ \t#]*$", outside_code, flags=re.MULTILINE)
    return (heading.group(1).strip() if heading else ""), [Page(None, text)]


def _parse_plain_text(data: bytes, source: str, limits: InflateLimits) -> tuple[str, list[Page]]:
    return "", [Page(None, _decode_text(data))]


def _parse_docx(data: bytes, source: str, limits: InflateLimits) -> tuple[str, list[Page]]:
    import docx

    check_zip_inflation(data, source, limits, "DOCX")
    # Damaged packages fail deep inside zipfile/lxml/python-docx with assorted exception types.
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(document))
        title = document.core_properties.title or ""
    except Exception as exc:
        raise BrokenFileError(source, f"not a DOCX or damaged: {exc}") from exc
    if not title.strip():
        title = next((text for text, is_heading in blocks if is_heading), "")
    return title.strip(), [Page(None, "\n\n".join(text for text, _ in blocks))]


def _docx_blocks(document) -> Iterator[tuple[str, bool]]:
    """(text, is_heading) for each non-empty paragraph and table, in document order."""
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            text = _docx_table_text(block)
            is_heading = False
        else:
            text = block.text.strip()
            style = block.style.name if block.style is not None else ""
            is_heading = style.startswith(("Heading", "Title"))
        if text:
            yield text, is_heading


def _docx_table_text(table) -> str:
    """One line per row, cells separated by " | "; merged cells (the same cell repeated) appear once."""
    lines = []
    for row in table.rows:
        seen, cells = set(), []
        for cell in row.cells:
            if id(cell._tc) not in seen and (text := cell.text.strip()):
                cells.append(" ".join(text.split()))
            seen.add(id(cell._tc))
        if cells:
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def check_zip_inflation(data: bytes, source: str, limits: InflateLimits, kind: str) -> None:
    """Refuse a ZIP-based file (DOCX, and any later OOXML or EPUB format) that would inflate beyond ``limits``,
    before its parser opens it: first on what its members declare, then on what they do inflate to, read in
    bounded chunks and dropped. CPython's zipfile stops a member at its declared size (then fails its CRC);
    counting here keeps the bound whatever zipfile does."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            _check_declared_sizes(members, source, limits)
            inflated = 0
            for member in members:
                with archive.open(member) as stream:
                    while chunk := stream.read(_ZIP_READ_CHUNK):
                        inflated += len(chunk)
                        if inflated > limits.max_bytes:
                            raise _beyond(source, limits.max_bytes, f"{member.filename} inflates past its "
                                          "declared size")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError,
            OSError, ValueError) as exc:
        raise BrokenFileError(source, f"not a {kind} or damaged: {exc}") from exc


def _check_declared_sizes(members: list[zipfile.ZipInfo], source: str, limits: InflateLimits) -> None:
    for member in members:
        # CPython inflates other methods (bzip2, LZMA) without an output bound per read; OOXML uses only these.
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BrokenFileError(source, f"{member.filename} uses ZIP compression method {member.compress_type}; "
                                  "only stored and deflated members are read")
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_GRACE_BYTES and ratio > limits.max_ratio:
            raise InflateLimitError(source, f"inflates {ratio:.0f}:1 ({member.filename}), beyond the compression "
                                    f"ratio limit of {limits.max_ratio:g}:1")
    declared = sum(member.file_size for member in members)
    if declared > limits.max_bytes:
        raise _beyond(source, limits.max_bytes, f"its {len(members)} ZIP members declare {_mib(declared)} MiB")


_PARSERS: MappingProxyType[str, Callable[[bytes, str, InflateLimits], tuple[str, list[Page]]]] = MappingProxyType({
    "application/pdf": _parse_pdf,
    "text/html": _parse_html,
    "text/markdown": _parse_markdown,
    "text/plain": _parse_plain_text,
    "text/x-rst": _parse_plain_text,
    DOCX_MEDIA_TYPE: _parse_docx,
})


# --- text helpers ---

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16: FF FE 00 00
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _decode_text(data: bytes) -> str:
    """UTF-8 (or the encoding a BOM names); bytes that are not valid UTF-8 become U+FFFD, not an error."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    return _normalize_newlines(data.decode(encoding, errors="replace"))


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _tidy_lines(text: str) -> str:
    """Strip every line and keep at most one blank line between blocks."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- input paths ---

def iter_input_paths(inputs: list[str], recursive: bool = True) -> Iterator[Path]:
    """Every file named by ``inputs`` (files, folders, glob patterns with ``**``), each once, in a stable order.

    Folders are walked in sorted order, skipping hidden files and folders; unsupported files are yielded too,
    so the caller can report them. A path that does not exist raises FileNotFoundError; a pattern that
    matches nothing yields nothing.
    """
    seen: set[Path] = set()
    for item in inputs:
        for path in _expand_input(item, recursive):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                yield path


def _expand_input(item: str, recursive: bool) -> Iterator[Path]:
    path = Path(item).expanduser()
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from _walk_folder(path, recursive, set())
    elif any(char in item for char in "*?["):
        for match in sorted(glob.glob(os.path.expanduser(item), recursive=recursive)):
            match_path = Path(match)
            if match_path.is_dir():
                yield from _walk_folder(match_path, recursive, set())
            elif match_path.is_file():
                yield match_path
    else:
        raise FileNotFoundError(f"{item}: no such file or folder")


def _walk_folder(folder: Path, recursive: bool, visited: set[Path]) -> Iterator[Path]:
    real = folder.resolve()
    if real in visited:  # a symlink loop
        return
    visited.add(real)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if recursive:
                yield from _walk_folder(entry, recursive, visited)
        elif entry.is_file():
            yield entry

"""Loading real files: PDF (made with fpdf2), HTML, Markdown, DOCX (made with python-docx), text."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
import tracemalloc
import zipfile
from pathlib import Path

import docx
import pytest
from fpdf import FPDF
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from nimrag.pipeline.loaders import (
    MIB,
    SUPPORTED_TYPES,
    BrokenFileError,
    DocumentError,
    InflateLimitError,
    InflateLimits,
    UnsupportedTypeError,
    iter_input_paths,
    parse_bytes,
    parse_file,
)


def make_pdf(page_texts: list[str], title: str | None = None) -> bytes:
    """A PDF with one page per text; an empty string makes a page without text (like a scan)."""
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for text in page_texts:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_docx(title: str | None = None) -> bytes:
    document = docx.Document()
    if title:
        document.core_properties.title = title
    document.add_paragraph("Intro paragraph before the heading.")
    document.add_heading("Quarterly Report", level=1)
    document.add_paragraph("Revenue grew in every region.")
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("Region", "Revenue"), ("EMEA", "42")]):
        for cell, text in zip(row.cells, cells):
            cell.text = text
    document.add_paragraph("Closing remarks after the table.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_pdf_keeps_page_numbers_text_and_title():
    data = make_pdf(["Alpha apples on page one.", "Bravo bananas on page two.", "Charlie cherries on page three."],
                    title="Fruit Atlas")
    doc = parse_bytes(data, "atlas.pdf")
    assert [page.number for page in doc.pages] == [1, 2, 3]
    assert "Alpha apples" in doc.pages[0].text and "Bravo bananas" in doc.pages[1].text
    assert "Charlie cherries" in doc.pages[2].text and "Alpha" not in doc.pages[2].text
    assert doc.title == "Fruit Atlas" and doc.media_type == "application/pdf" and doc.source == "atlas.pdf"
    assert doc.content_hash == hashlib.sha256(data).hexdigest()


def test_pdf_pages_without_text_are_skipped_but_numbers_kept():
    doc = parse_bytes(make_pdf(["First page text.", "", "Third page text."]), "gaps.pdf")
    assert [page.number for page in doc.pages] == [1, 3]
    assert doc.title == "gaps"  # no metadata title: the file stem


def test_scanned_like_pdf_has_no_text_layer():
    with pytest.raises(BrokenFileError, match="no text layer") as caught:
        parse_bytes(make_pdf([""]), "scan.pdf")
    assert "scan.pdf" in str(caught.value) and caught.value.source == "scan.pdf"


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_pdf_is_broken(keep):
    data = make_pdf(["Some text that will be cut off."])
    with pytest.raises(BrokenFileError, match="not a PDF or damaged") as caught:
        parse_bytes(data[: int(len(data) * keep)], "cut.pdf")
    assert "cut.pdf" in str(caught.value)


def test_text_named_pdf_is_not_a_pdf():
    with pytest.raises(BrokenFileError, match="not a PDF or damaged") as caught:
        parse_bytes(b"just some words", "fake.pdf")
    assert str(caught.value).startswith("fake.pdf: ")


def test_html_visible_text_title_and_breaks():
    html = b"""<!DOCTYPE html><html><head><title>Garden Guide</title><style>p { color: red; }</style>
    <script>var secret = "hidden script";</script></head>
    <body><nav>Home | About</nav><!-- a comment -->
    <h1>Planting   tomatoes</h1>
    <p>Tomatoes need
       full sun.<br>Water them daily.</p>
    <p hidden>Invisible paragraph.</p>
    <ul><li>Stake them</li><li>Prune them</li></ul>
    <script>alert("also hidden")</script></body></html>"""
    doc = parse_bytes(html, "garden.html")
    text = doc.pages[0].text
    assert doc.title == "Garden Guide" and doc.media_type == "text/html"
    assert text == ("Planting tomatoes\n\nTomatoes need full sun.\nWater them daily.\n\n"
                    "Stake them\n\nPrune them")
    for hidden in ("secret", "color", "Home", "comment", "Invisible", "alert"):
        assert hidden not in text


def test_html_title_falls_back_to_first_h1_and_honours_charset():
    html = '<html><head><meta charset="latin-1"></head><body><h1>Café menu</h1><p>Crème brûlée</p></body></html>'
    doc = parse_bytes(html.encode("latin-1"), "menu.htm")
    assert doc.title == "Café menu" and "Crème brûlée" in doc.pages[0].text


def test_markdown_kept_as_is_with_heading_title():
    text = "Intro line.\n\n```sh\n# a shell comment\n```\n\n# Install Guide\n\nRun `pip install nimrag`.\n\n## Details\n"
    doc = parse_bytes(text.encode(), "guide.md")
    assert doc.title == "Install Guide" and doc.pages == [doc.pages[0]] and doc.pages[0].text == text
    assert doc.pages[0].number is None and doc.media_type == "text/markdown"


def test_markdown_without_heading_is_titled_by_stem():
    assert parse_bytes(b"## Only a subheading\n\nBody.", "notes/setup.markdown").title == "setup"


def test_docx_paragraphs_and_table_in_order_with_heading_title():
    doc = parse_bytes(make_docx(), "report.docx")
    text = doc.pages[0].text
    assert doc.title == "Quarterly Report"
    assert text == ("Intro paragraph before the heading.\n\nQuarterly Report\n\nRevenue grew in every region.\n\n"
                    "Region | Revenue\nEMEA | 42\n\nClosing remarks after the table.")


def test_docx_title_from_core_properties():
    assert parse_bytes(make_docx(title="Annual Numbers"), "r.docx").title == "Annual Numbers"


def test_damaged_docx_is_broken():
    with pytest.raises(BrokenFileError, match="not a DOCX or damaged") as caught:
        parse_bytes(make_docx()[:500], "bad.docx")
    assert "bad.docx" in str(caught.value)


def docx_bomb(padding_mib: int, declared_document_bytes: int | None = None, media: bytes = b"") -> bytes:
    """A valid DOCX whose document.xml carries ``padding_mib`` MiB of spaces (deflate makes it ~1000 times
    smaller), written piece by piece; ``declared_document_bytes`` makes its central directory lie about that
    member's size, ``media`` adds an (incompressible) image member."""
    source = zipfile.ZipFile(io.BytesIO(make_docx()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            body = source.read(info)
            if info.filename != "word/document.xml":
                archive.writestr(info.filename, body)
                continue
            head, tail = body.split(b"</w:body>")
            with archive.open(info.filename, "w") as member:
                member.write(head)
                for _ in range(padding_mib):
                    member.write(b" " * MIB)
                member.write(b"</w:body>" + tail)
            if declared_document_bytes is not None:  # written into the central directory at close
                archive.getinfo(info.filename).file_size = declared_document_bytes
        if media:
            archive.writestr("word/media/image1.png", media)
    return out.getvalue()


def parse_with_peak(data: bytes, source: str, limits: InflateLimits) -> tuple[Exception | None, int]:
    """What parsing raised (or None), and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        parse_bytes(data, source, limits=limits)
        return None, tracemalloc.get_traced_memory()[1]
    except DocumentError as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_docx_bomb_refused_on_its_declared_size_without_inflating_it():
    bomb = docx_bomb(64)
    assert len(bomb) < MIB
    error, peak = parse_with_peak(bomb, "bomb.docx", InflateLimits(max_bytes=4 * MIB, max_ratio=1e6))
    assert isinstance(error, InflateLimitError), error
    assert error.reason.startswith("inflates beyond 4 MiB: ") and "declare 64" in error.reason
    assert peak < 4 * MIB  # nothing inflated: python-docx alone would hold the 64 MiB


def test_docx_bomb_refused_on_its_compression_ratio():
    error, peak = parse_with_peak(docx_bomb(8), "dense.docx", InflateLimits())
    assert isinstance(error, InflateLimitError), error
    assert "word/document.xml" in error.reason and "compression ratio limit of 100:1" in error.reason
    assert peak < MIB


def test_docx_whose_header_lies_about_its_size_is_stopped_at_the_declared_size():
    liar = docx_bomb(64, declared_document_bytes=4096)
    error, peak = parse_with_peak(liar, "liar.docx", InflateLimits(max_bytes=4 * MIB, max_ratio=1e6))
    # Read in bounded pieces, the member ends at the 4096 bytes it declares, and then its CRC does not match.
    assert isinstance(error, BrokenFileError) and "not a DOCX or damaged" in error.reason, error
    assert "CRC" in error.reason and peak < 4 * MIB


def test_docx_with_a_large_incompressible_member_still_parses():
    image = os.urandom(2 * MIB)  # over the ratio's grace size, compressed 1:1
    doc = parse_bytes(docx_bomb(0, media=image), "photos.docx", limits=InflateLimits(max_bytes=4 * MIB))
    assert doc.title == "Quarterly Report" and "Revenue grew" in doc.pages[0].text
    with pytest.raises(InflateLimitError, match="inflates beyond 2 MiB"):  # the image counts too
        parse_bytes(docx_bomb(0, media=image), "photos.docx", limits=InflateLimits(max_bytes=2 * MIB))


def test_docx_with_another_compression_method_is_refused():
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(make_docx())) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_BZIP2) as bz:
        for info in source.infolist():
            bz.writestr(info.filename, source.read(info))
    with pytest.raises(BrokenFileError, match="compression method 12"):
        parse_bytes(out.getvalue(), "bz.docx")


def pdf_with_padded_pages(pages: int, padding_bytes: int) -> bytes:
    """A PDF whose pages' deflated content streams end in ``padding_bytes`` spaces each."""
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                                                NameObject("/Subtype"): NameObject("/Type1"),
                                                NameObject("/BaseFont"): NameObject("/Helvetica")}))
    for number in range(1, pages + 1):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
            {NameObject("/F1"): font})})
        content = DecodedStreamObject()
        content.set_data(b"BT /F1 12 Tf 72 720 Td (Page %d words) Tj ET\n" % number + b" " * padding_bytes)
        page[NameObject("/Contents")] = writer._add_object(content.flate_encode())
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_content_streams_are_bounded():
    assert [p.text for p in parse_bytes(pdf_with_padded_pages(2, 0), "small.pdf").pages] == \
        ["Page 1 words", "Page 2 words"]
    one_huge = pdf_with_padded_pages(1, 16 * MIB)
    error, peak = parse_with_peak(one_huge, "huge.pdf", InflateLimits(max_bytes=2 * MIB))
    assert isinstance(error, InflateLimitError) and "pypdf" in error.reason, error  # pypdf's limit, set to ours
    assert peak < 8 * MIB
    together = pdf_with_padded_pages(3, MIB)
    with pytest.raises(InflateLimitError, match=r"inflates beyond 2\.5 MiB: the content of pages 1-3 takes 3 MiB"):
        parse_bytes(together, "long.pdf", limits=InflateLimits(max_bytes=int(2.5 * MIB)))


def test_documents_are_parsed_at_most_max_concurrent_parses_at_once(tmp_path):
    from nimrag.pipeline.clients import ServiceClients
    from nimrag.pipeline.ingest import IngestItem, Ingestor
    from nimrag.pipeline.settings import PipelineSettings
    from nimrag.pipeline.vectorstore.faiss import FaissVectorStore

    settings = PipelineSettings(data_path=tmp_path, max_concurrent_parses=2)
    pairs, lock, inside, most = threading.Barrier(2, timeout=30), threading.Lock(), [0], [0]

    def load():  # two parses must be in here together to pass the barrier; a third must not join them
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            pairs.wait()
        finally:
            with lock:
                inside[0] -= 1
        raise BrokenFileError("x.txt", "refused after parsing")

    async def run():
        clients = ServiceClients(settings)
        ingestor = Ingestor(clients, settings)
        store = FaissVectorStore(tmp_path / "collections")
        try:
            collection = await store.create("parses", dimension=4)
            items = [IngestItem(f"{n}.txt", load) for n in range(8)]
            return await ingestor.ingest(collection, items, chunker=None)
        finally:
            await ingestor.close()
            await clients.close()
            await store.close()

    report = asyncio.run(run())
    assert report.counts() == {"failed": 8} and {f.reason for f in report.files} == {"refused after parsing"}
    assert most[0] == 2


def test_utf8_text_with_accents_and_emoji(tmp_path):
    text = "Naïve café — déjà vu 🎉\r\nSecond line ✓"
    path = tmp_path / "notes.txt"
    path.write_bytes(text.encode("utf-8"))
    doc = parse_file(path)
    assert doc.pages[0].text == "Naïve café — déjà vu 🎉\nSecond line ✓"
    assert doc.source == "notes.txt" and doc.title == "notes" and doc.media_type == "text/plain"
    assert parse_file(path, source="team/notes.txt").source == "team/notes.txt"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_text_with_a_bom(encoding):
    assert parse_bytes("Grüße 🎉".encode(encoding), "bom.txt").pages[0].text == "Grüße 🎉"


def test_invalid_utf8_is_replaced_not_fatal():
    assert parse_bytes(b"ok \xff\xfe bytes", "odd.rst").pages[0].text == "ok \ufffd\ufffd bytes"


@pytest.mark.parametrize("content", [b"", b"  \n\t \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(BrokenFileError, match="empty file") as caught:
        parse_file(path)
    assert "empty.txt" in str(caught.value) and caught.value.reason == "empty file"


def test_html_without_visible_text():
    with pytest.raises(BrokenFileError, match="no text"):
        parse_bytes(b"<html><script>x()</script></html>", "blank.html")


def test_unsupported_type_is_refused_without_reading(tmp_path):
    with pytest.raises(UnsupportedTypeError, match=r"unsupported file type \.xyz") as caught:
        parse_file(tmp_path / "missing.xyz")  # not read: the type alone decides
    assert "missing.xyz" in str(caught.value) and isinstance(caught.value, DocumentError)
    with pytest.raises(UnsupportedTypeError, match="no suffix"):
        parse_bytes(b"data", "Makefile")


def test_size_limit(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 101)
    with pytest.raises(BrokenFileError, match="too large"):
        parse_file(path, max_bytes=100)
    with pytest.raises(BrokenFileError, match="too large"):
        parse_bytes(b"x" * 101, "big.txt", max_bytes=100)
    assert parse_file(path, max_bytes=101).pages[0].text == "x" * 101


def test_unreadable_path_is_broken(tmp_path):
    with pytest.raises(BrokenFileError, match="cannot read"):
        parse_file(tmp_path / "gone.pdf")


def test_supported_types_cover_the_formats_and_are_read_only():
    assert {".pdf", ".html", ".htm", ".md", ".markdown", ".txt", ".docx"} <= set(SUPPORTED_TYPES)
    with pytest.raises(TypeError):
        SUPPORTED_TYPES[".exe"] = "application/x-msdownload"  # type: ignore[index]


def make_tree(root: Path) -> None:
    for relative in ["a.md", "b.pdf", "notes.xyz", "sub/c.txt", "sub/deeper/d.md", ".hidden.md",
                     ".git/config.md", "sub/.cache/e.md"]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("content")


def names(paths, root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def test_iter_input_paths_walks_folders_sorted_skipping_hidden(tmp_path):
    make_tree(tmp_path)
    assert names(iter_input_paths([str(tmp_path)]), tmp_path) == [
        "a.md", "b.pdf", "notes.xyz", "sub/c.txt", "sub/deeper/d.md"]
    assert names(iter_input_paths([str(tmp_path)], recursive=False), tmp_path) == ["a.md", "b.pdf", "notes.xyz"]


def test_iter_input_paths_globs_files_and_dedupes(tmp_path):
    make_tree(tmp_path)
    found = iter_input_paths([f"{tmp_path}/**/*.md", str(tmp_path / "a.md"), str(tmp_path / ".hidden.md"),
                              f"{tmp_path}/su*"])
    # "**" skips hidden entries; a hidden file named outright is yielded; each file once.
    assert names(found, tmp_path) == ["a.md", "sub/deeper/d.md", ".hidden.md", "sub/c.txt"]
    assert list(iter_input_paths([f"{tmp_path}/*.nothing"])) == []


def test_iter_input_paths_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pdf"):
        list(iter_input_paths([str(tmp_path / "nope.pdf")]))

"""Token-aware chunking, checked against the bundled embedding model's tokenizer."""

from __future__ import annotations

import hashlib
import random
import time
from itertools import pairwise

import pytest

from nimrag.pipeline.chunking import Chunker, load_default_tokenizer
from nimrag.pipeline.documents import Page, ParsedDocument

# Each of these is one token for the bundled (BERT WordPiece) tokenizer: overlaps can be checked exactly.
SIMPLE_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "into", "green",
                "field", "with", "tall", "grass"]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = load_default_tokenizer()
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def document(*page_texts: str, numbered: bool = True) -> ParsedDocument:
    pages = [Page(number if numbered else None, text) for number, text in enumerate(page_texts, start=1)]
    return ParsedDocument(source="doc.pdf", title="The Doc", media_type="application/pdf", pages=pages,
                          content_hash="0" * 64)


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(SIMPLE_WORDS) for _ in range(n))


def prose(n_sentences: int, seed: int = 0) -> str:
    """Paragraphs of sentences mixing multi-token words, punctuation, accents and emoji."""
    rng = random.Random(seed)
    vocabulary = SIMPLE_WORDS + ["unbelievably", "tokenization", "naïve", "café", "🎉", "(aside)", "e.g.", "42.5"]
    sentences = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 30))).capitalize() + rng.choice(".!?")
                 for _ in range(n_sentences)]
    return "".join(sentence + rng.choice([" ", "  ", "\n", "\n\n", " \n\n  "]) for sentence in sentences)


def test_offsets_are_exact_slices_without_edge_whitespace():
    doc = document("  \n" + prose(120, seed=1) + "\n\n  ", prose(80, seed=2))
    chunks = Chunker(chunk_size=64, chunk_overlap=16).split(doc)
    assert len(chunks) > 10
    for chunk in chunks:
        page = doc.pages[chunk.page - 1]
        assert page.text[chunk.start:chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert chunk.content_hash == hashlib.sha256(chunk.text.encode()).hexdigest()
        assert chunk.title == "The Doc" and chunk.source == "doc.pdf"


def test_no_chunk_exceeds_the_size_and_all_text_is_covered(tokenizer):
    text = prose(300, seed=3)
    chunks = Chunker(chunk_size=48, chunk_overlap=12).split(document(text))
    assert max(count(tokenizer, chunk.text) for chunk in chunks) <= 48
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())


def test_overlap_is_exactly_the_asked_tokens_for_single_token_words(tokenizer):
    text = words(2000)
    chunks = Chunker(chunk_size=100, chunk_overlap=30).split(document(text))
    for previous, current in pairwise(chunks):
        assert count(tokenizer, previous.text) == 100 or current is chunks[-1]
        assert count(tokenizer, text[current.start:previous.end]) == 30
    assert chunks[-1].end == len(text)


def test_overlap_with_multi_token_words_extends_to_a_word_start(tokenizer):
    text = prose(200, seed=4)
    chunks = Chunker(chunk_size=64, chunk_overlap=20).split(document(text))
    for previous, current in pairwise(chunks):
        assert previous.start < current.start < previous.end
        overlap = count(tokenizer, text[current.start:previous.end])
        assert 20 <= overlap <= 26  # the longest word in prose() has fewer than 7 tokens


def test_zero_overlap_chunks_tile_the_page(tokenizer):
    text = words(1000, seed=5)
    chunks = Chunker(chunk_size=64, chunk_overlap=0).split(document(text))
    assert sum(count(tokenizer, chunk.text) for chunk in chunks) == count(tokenizer, text)
    assert all(previous.end < current.start for previous, current in pairwise(chunks))


def test_chunks_stay_on_their_page_and_are_numbered_across_the_document():
    doc = document(words(150, seed=6), "   ", words(10, seed=7), words(150, seed=8))
    chunks = Chunker(chunk_size=64, chunk_overlap=16).split(doc)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert [chunk.page for chunk in chunks] == sorted(chunk.page for chunk in chunks)
    assert {chunk.page for chunk in chunks} == {1, 3, 4}  # the whitespace-only page gives no chunk
    assert [chunk.text for chunk in chunks if chunk.page == 3] == [doc.pages[2].text]
    unnumbered = Chunker(chunk_size=64, chunk_overlap=16).split(document(words(50), numbered=False))
    assert [chunk.page for chunk in unnumbered] == [None]


def test_prefers_a_sentence_end_in_the_last_fifth_of_the_window(tokenizer):
    sentence = words(45, seed=9) + "."  # 46 tokens: the end is inside the last 20% of a 50-token window
    text = sentence + " " + words(100, seed=10)
    first = Chunker(chunk_size=50, chunk_overlap=10).split(document(text))[0]
    assert first.text == sentence


def test_ignores_a_sentence_end_too_early_in_the_window(tokenizer):
    text = words(20, seed=11) + ". " + words(100, seed=12)  # the period is token 21 of a 50-token window
    first = Chunker(chunk_size=50, chunk_overlap=10).split(document(text))[0]
    assert count(tokenizer, first.text) == 50


def test_prefers_a_paragraph_break_over_a_later_sentence_end():
    paragraph = words(41, seed=13) + "."
    text = paragraph + "\n\n" + words(4, seed=14) + ". " + words(100, seed=15)
    first = Chunker(chunk_size=50, chunk_overlap=10).split(document(text))[0]
    assert first.text == paragraph


def test_cjk_sentences_end_without_spaces():
    text = "我们今天去公园散步。" * 20
    chunks = Chunker(chunk_size=32, chunk_overlap=8).split(document(text))
    assert all(chunk.text.endswith("。") for chunk in chunks)


def test_a_word_longer_than_the_window_is_cut_inside_the_word():
    text = "start " + "qzx" * 200 + " end"
    chunks = Chunker(chunk_size=16, chunk_overlap=4).split(document(text))
    assert chunks[0].text.startswith("start") and chunks[-1].text.endswith("end")
    assert all(text[chunk.start:chunk.end] == chunk.text for chunk in chunks)


def test_deterministic_across_runs_and_instances():
    doc = document(prose(100, seed=16), prose(50, seed=17))
    chunker = Chunker(chunk_size=64, chunk_overlap=16)
    assert chunker.split(doc) == chunker.split(doc) == Chunker(chunk_size=64, chunk_overlap=16).split(doc)


def test_empty_document_gives_no_chunks():
    assert Chunker().split(document(" \n\t ")) == []


@pytest.mark.parametrize(("size", "overlap"), [(15, 0), (256, 256), (256, 300), (256, -1), (16, 16)])
def test_invalid_sizes_raise(size, overlap):
    with pytest.raises(ValueError, match="chunk_size|chunk_overlap"):
        Chunker(chunk_size=size, chunk_overlap=overlap)


def test_smallest_valid_sizes():
    chunks = Chunker(chunk_size=16, chunk_overlap=15).split(document(words(100)))
    assert all(previous.start < current.start for previous, current in pairwise(chunks))


def test_callers_tokenizer_is_not_changed(tokenizer):
    from tokenizers import Tokenizer

    theirs = Tokenizer.from_str(tokenizer.to_str())
    theirs.enable_truncation(max_length=8)
    chunker = Chunker(chunk_size=32, chunk_overlap=0, tokenizer=theirs)
    assert theirs.truncation["max_length"] == 8
    assert chunker.count_tokens(words(100)) == 100  # no truncation in the chunker's copy


def test_chunking_speed_on_a_megabyte(capsys):
    paragraphs, size, seed = [], 0, 0
    while size < 1_000_000:
        paragraphs.append(prose(6, seed=seed))
        size += len(paragraphs[-1])
        seed += 1
    doc = document(*("".join(paragraphs[i:i + 50]) for i in range(0, len(paragraphs), 50)))
    chunker = Chunker()
    began = time.perf_counter()
    chunks = chunker.split(doc)
    elapsed = time.perf_counter() - began
    with capsys.disabled():
        print(f"\nchunking: {size / 1e6:.2f} MB, {len(doc.pages)} pages -> {len(chunks)} chunks (256/64 tokens) "
              f"in {elapsed:.2f} s = {len(chunks) / elapsed:.0f} chunks/s")
    assert chunks

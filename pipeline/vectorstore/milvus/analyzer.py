"""The words BM25 sees, computed here for every Milvus: the same on Milvus Lite and on a Milvus cluster.

Milvus analyzes text itself, but its analyzers differ by server (Milvus Lite has no stemmer) and none is SQLite's
``porter unicode61 remove_diacritics 2``, which the FAISS store ranks with. So the pipeline analyzes: each chunk
is stored a second time as its analyzed terms (lowercased, diacritics removed, Porter-stemmed), which Milvus's
BM25 function reads with a plain whitespace-and-punctuation tokenizer; a query is analyzed the same way before
it is sent, with stop words dropped (unless it has nothing else), as the FAISS store does. Where the server has
no BM25 function, the same terms become sparse vectors computed here (``sparse_vector``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
import zlib
from collections import Counter

import snowballstemmer

WORD = re.compile(r"[^\W_]+")  # runs of letters and digits: what unicode61 keeps ('_' separates)
# Lucene's English stop words, as the FAISS store drops them from queries
STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with"])
MAX_QUERY_TERMS = 64
# The tokenizer Milvus runs on analyzed terms. "lowercase" is a no-op on them; a filter list keeps a Milvus
# cluster's standard analyzer from adding anything of its own (Milvus Lite reads only "stop" filters).
MILVUS_ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}
BM25_K1 = 1.2  # SQLite FTS5's bm25() constants, so both stores score alike
BM25_B = 0.75
# Sparse vectors computed here cannot know the collection's average chunk length: this stands for it
# (chunks of 256 tokens hold about 150 words).
ASSUMED_AVERAGE_TERMS = 150.0

STEM_CACHE = 1 << 16  # words whose stems are kept: stemming in pure Python is slower than everything else here
_stem = functools.lru_cache(maxsize=STEM_CACHE)(snowballstemmer.stemmer("porter").stemWord)  # FTS5's algorithm


def fold(text: str) -> str:
    """Lowercase without diacritics ("Éléphant" -> "elephant"), as unicode61's remove_diacritics does."""
    text = text.lower()
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _stems(words: list[str]) -> list[str]:
    return [stem for stem in map(_stem, words) if stem]  # Porter stems a lone "s" to nothing


def terms(text: str) -> list[str]:
    """The analyzed terms of ``text`` in order, repeats kept."""
    return _stems(WORD.findall(fold(text or "")))


def document_terms(text: str) -> str:
    """What a chunk stores for BM25: its terms, space-separated."""
    return " ".join(terms(text))


def query_terms(text: str) -> list[str]:
    """The distinct terms of a query, stop words dropped unless nothing else is left; at most MAX_QUERY_TERMS."""
    words = list(dict.fromkeys(WORD.findall(fold(text or ""))))
    words = [word for word in words if word not in STOPWORDS] or words
    return list(dict.fromkeys(_stems(words)))[:MAX_QUERY_TERMS]


def term_id(term: str) -> int:
    """A sparse-vector dimension for a term: its CRC-32 (Milvus sparse indices are uint32)."""
    return zlib.crc32(term.encode())


def sparse_vector(analyzed: str) -> dict[int, float]:
    """A chunk's sparse vector for servers without BM25: each term's BM25 term-frequency part, length-normalized
    against ASSUMED_AVERAGE_TERMS. Queries weigh each term 1 (``query_vector``), so the inverse document
    frequency is missing: a fallback that ranks worse than the server's BM25, never used where that exists."""
    counts = Counter(analyzed.split())
    length = sum(counts.values())
    norm = BM25_K1 * (1 - BM25_B + BM25_B * length / ASSUMED_AVERAGE_TERMS)
    return {term_id(term): tf * (BM25_K1 + 1) / (tf + norm) for term, tf in counts.items()}


def query_vector(words: list[str]) -> dict[int, float]:
    return {term_id(word): 1.0 for word in words}

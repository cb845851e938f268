"""The FAISS side of a collection: an inner-product index keyed by chunk id (flat, HNSW or IVF), and the GPU
copy that answers unfiltered searches. A cache of SQLite: the collection rebuilds it whenever in doubt."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import faiss
import numpy as np

from nimrag.pipeline.vectorstore.base import StoreError

logger = logging.getLogger(__name__)

HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 256  # candidates kept while searching: 100 (vdb_top_k) found only 0.81 of the exact top 100
HNSW_MAX_EF_SEARCH = 4096  # the most a filtered search widens to
HNSW_TOMBSTONE_RATIO = 0.2  # rebuild an HNSW graph once this share of its vectors belongs to deleted chunks
IVF_MIN_VECTORS = 1000  # below this an "ivf" collection searches exactly: too few vectors to train lists
IVF_POINTS_PER_LIST = 39  # faiss warns when k-means gets fewer training points per centroid
IVF_MIN_PROBES = 16


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def ivf_list_count(vectors: int) -> int:
    return max(1, min(int(4 * math.sqrt(vectors)), vectors // IVF_POINTS_PER_LIST))


def ivf_probes(lists: int) -> int:
    return min(lists, max(IVF_MIN_PROBES, lists // 4))


def as_id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)


def exact_search(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors @ query[0]
    best = np.argsort(-scores, kind="stable")[:k]
    return scores[best], ids[best]


def vector_problems(live: np.ndarray, indexed: np.ndarray) -> list[str]:
    problems = []
    if missing := len(np.setdiff1d(live, indexed)):
        problems.append(f"{missing} chunks have no vector in the index")
    if orphans := len(np.setdiff1d(indexed, live)):
        problems.append(f"{orphans} vectors in the index have no chunk")
    if len(indexed) != len(np.unique(indexed)):
        problems.append("the index holds an id twice")
    return problems


def index_structure(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexIDMap):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    raise StoreError(f"unsupported FAISS index {type(index).__name__}")


def ivf_ids(index: faiss.IndexIVF) -> np.ndarray:
    lists, parts = index.invlists, []
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size:
            pointer = lists.get_ids(number)
            parts.append(faiss.rev_swig_ptr(pointer, size).copy())
            lists.release_ids(number, pointer)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class VectorIndex:
    """A FAISS inner-product index keyed by chunk id, whatever its structure. Not thread-safe: the collection's
    lock guards it.

    flat: IndexIDMap(IndexFlatIP), exact; removals are remove_ids.
    hnsw: IndexIDMap(IndexHNSWFlat), which cannot remove: removed ids become tombstones, filtered out of every
          search with an IDSelector, and the graph is rebuilt once tombstones pass HNSW_TOMBSTONE_RATIO.
    ivf:  IndexIVFFlat with its own ids (IndexIDMap's remove_ids is wrong for IVF, which does not renumber).
    """

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.structure = index_structure(index)
        self._tombstones: set[int] = set()
        self._tombstone_filter: tuple | None = None  # (IDSelectorNot, IDSelectorBatch): the Not points at the Batch

    @classmethod
    def empty(cls, structure: str, dimension: int) -> VectorIndex:
        description = f"IDMap,HNSW{HNSW_NEIGHBOURS}" if structure == "hnsw" else "IDMap,Flat"
        return cls(faiss.index_factory(dimension, description, faiss.METRIC_INNER_PRODUCT))

    @classmethod
    def build(cls, kind: str, dimension: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        if kind == "ivf" and len(ids) >= IVF_MIN_VECTORS:
            index = faiss.index_factory(dimension, f"IVF{ivf_list_count(len(ids))},Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(np.ascontiguousarray(vectors, dtype=np.float32))
            built = cls(index)
        else:
            built = cls.empty("hnsw" if kind == "hnsw" else "flat", dimension)
        built.add(ids, vectors)
        return built

    @classmethod
    def deserialize(cls, data: bytes) -> VectorIndex:
        # already the concrete class, and the owner of the C++ object (downcast_index would not own it)
        return cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))

    def serialize(self) -> np.ndarray:
        return faiss.serialize_index(self.index)  # tombstoned vectors included; reconciling finds them again

    @property
    def dimension(self) -> int:
        return self.index.d

    @property
    def live_count(self) -> int:
        return self.index.ntotal - len(self._tombstones)

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstones)

    def fits(self, kind: str, dimension: int) -> bool:
        allowed = {"flat": ("flat",), "hnsw": ("hnsw",), "ivf": ("flat", "ivf")}[kind]
        return self.dimension == dimension and self.structure in allowed

    def ids(self) -> np.ndarray:
        """The ids of the live vectors (tombstones excluded), unordered."""
        raw = ivf_ids(self.index) if self.structure == "ivf" else faiss.vector_to_array(self.index.id_map)
        if self._tombstones:
            raw = raw[~np.isin(raw, np.fromiter(self._tombstones, dtype=np.int64))]
        return raw

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), as_id_array(ids))

    def remove(self, ids: np.ndarray) -> None:
        ids = as_id_array(ids)
        if not len(ids):
            return
        if self.structure != "hnsw":
            self.index.remove_ids(ids)
            return
        present = ids[np.isin(ids, faiss.vector_to_array(self.index.id_map))]
        self._tombstones.update(present.tolist())
        tombstones = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
        self._tombstone_filter = (faiss.IDSelectorNot(tombstones), tombstones)

    def needs_rebuild(self, kind: str) -> bool:
        if self.structure == "hnsw":
            return len(self._tombstones) > HNSW_TOMBSTONE_RATIO * self.index.ntotal
        if kind != "ivf":
            return False
        if self.structure == "flat":
            return self.live_count >= IVF_MIN_VECTORS
        # retrain when the collection has grown (or shrunk) well past what the lists were sized for
        return self.live_count < IVF_MIN_VECTORS // 2 or ivf_list_count(self.live_count) >= 2 * self.index.nlist

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query; ``allowed`` restricts to those ids through an IDSelector (exact
        for flat; HNSW and IVF widen their search by the share of vectors the selector lets through)."""
        keep_alive = self._selector(allowed)
        selector = keep_alive[0] if keep_alive else None
        eligible = len(allowed) if allowed is not None else self.live_count
        share = max(eligible, 1) / max(self.index.ntotal, 1)
        scores, ids = self.index.search(query, k, params=self._search_parameters(k, selector, share))
        return scores[0], ids[0]

    def _selector(self, allowed: np.ndarray | None) -> tuple | None:
        if allowed is not None:  # ids read from SQLite are live, so no tombstone is among them
            return (faiss.IDSelectorBatch(as_id_array(allowed)),)
        return self._tombstone_filter

    def _search_parameters(self, k: int, selector: faiss.IDSelector | None,
                           share: float) -> faiss.SearchParameters | None:
        if self.structure == "hnsw":
            breadth = min(max(HNSW_MAX_EF_SEARCH, k), math.ceil(max(HNSW_EF_SEARCH, k) / share))
            return faiss.SearchParametersHNSW(efSearch=breadth, sel=selector)
        if self.structure == "ivf":
            probes = min(self.index.nlist, math.ceil(ivf_probes(self.index.nlist) / share))
            return faiss.SearchParametersIVF(nprobe=probes, sel=selector)
        return faiss.SearchParameters(sel=selector) if selector is not None else None


class GpuMirror:
    """A GPU copy of a flat index for unfiltered searches. Refreshed when the index is persisted, so it can
    lag; a search uses it only while it reflects the CPU index's generation, else the CPU index answers."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._resources = None
        self._copy: tuple[int, faiss.Index] | None = None  # (generation, index), swapped as one reference

    def refresh(self, vectors: VectorIndex, generation: int | None) -> None:
        if not self.enabled or vectors.structure != "flat" or generation is None:
            self._copy = None
            return
        try:
            if self._resources is None:
                self._resources = faiss.StandardGpuResources()
            self._copy = (generation, faiss.index_cpu_to_gpu(self._resources, 0, vectors.index))
        except Exception:  # e.g. out of GPU memory: the CPU index answers from now on
            logger.exception("copying the index to the GPU failed; searching on the CPU")
            self.enabled, self._copy = False, None

    def index_for(self, generation: int | None) -> faiss.Index | None:
        copy = self._copy
        return copy[1] if copy is not None and copy[0] == generation else None


"""Search latency of each vector-store backend on the same collection: FAISS + SQLite against Milvus Lite.

    python -m bench.store_search                     # 100,000 chunks: faiss, milvus (embedded), milvus-server
    python -m bench.store_search --quick             # smoke run: 10,000 chunks, 50 queries
    python -m bench.store_search --sizes 30000 --stores faiss,milvus

Each store named in ``--stores`` is opened through the pipeline's factory (``open_vector_store``) in a temporary
folder: ``faiss`` (FAISS + SQLite FTS5), ``milvus`` (Milvus Lite embedded in this process at a ``.db`` file) and
``milvus-server`` (``milvus-lite server`` as a subprocess on a loopback port, reached over gRPC, as replicas
share one). Into each goes the same collection of N synthetic chunks, built as ``bench.pipeline``'s search part
builds its own and with its helpers: ``Collection.upsert_document``, 1,000 chunks per document, texts SciFact
abstracts cut to 1,100 characters and reused in turn (``synthetic_texts``), vectors real embeddings of the first
``--base`` abstracts (the embedding service over HTTP, started here and stopped before any timing) with Gaussian
noise of norm about 0.5 added (``synthetic_vectors``, seed 0: the same vectors for every store). Flat index.

Timed per store, one query at a time, SciFact test claims as queries: ``dense_search`` (k = ``vdb_top_k``, 100)
with the claims embedded once beforehand, ``lexical_search`` (BM25: FTS5, or Milvus's full-text search), and the
pipeline's ``Retriever`` in hybrid mode without rerank (both searches, RRF, the fused chunks read back), its
query embedding served from those precomputed vectors so that only the store's and the pipeline's own work is
timed. Also the build time (all writes, the contract's ``upsert_document``). The table gives p50 and p99 ms per
store and the ratio of each store to ``faiss`` measured in the same run; the CPU other processes took during
each measurement is beside it. Results go to ``bench/results/store-search-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from bench.common import (
    REPO,
    RESULTS,
    CpuMeter,
    Service,
    fmt,
    free_port,
    int_list,
    machine_line,
    run_main,
)
from bench.pipeline import (
    CHUNKS_PER_SYNTHETIC_DOC,
    SYNTHETIC_NOISE_NORM,
    embed_queries,
    embed_texts,
    load_scifact,
    percentile,
    synthetic_texts,
    synthetic_vectors,
)
from bench.retrieval_quality import selected_profile
from nimrag.pipeline.documents import Chunk, Page, ParsedDocument
from nimrag.pipeline.retrieval import Retriever, SearchOptions
from nimrag.pipeline.settings import PipelineSettings
from nimrag.services.common.hardware import probe
from nimrag.services.common.settings import default_cache_path

STORES = ("faiss", "milvus", "milvus-server")
BASELINE = "faiss"
SERVER_STARTUP_S = 120.0
MILVUS_TIMEOUT_S = 60.0  # a 1,000-chunk insert on a busy 2-core machine can pass the pipeline's 10 s default
BUILD_PROGRESS = 20_000  # chunks written between progress lines
OPERATIONS = ("dense_search", "lexical_search", "hybrid (Retriever)")


# --- stores ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def milvus_server(folder: Path) -> Iterator[tuple[str, int]]:
    """``milvus-lite server`` on a free loopback port for the length of the ``with``: its URL and pid."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "milvus-server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(folder / "data"),
                                "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_STARTUP_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"milvus-lite server did not listen within {SERVER_STARTUP_S:.0f} s")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def store_settings(store: str, folder: Path, server_url: str | None) -> PipelineSettings:
    """The pipeline's settings for one store, with its own data folder."""
    data = folder / store
    if store == "faiss":
        return PipelineSettings(vector_store="faiss", data_path=data)
    uri = server_url if store == "milvus-server" else str(data / "milvus.db")
    return PipelineSettings(vector_store="milvus", data_path=data, milvus_uri=uri, milvus_timeout_s=MILVUS_TIMEOUT_S)


# --- building and timing --------------------------------------------------------------------------------------

async def build(collection, size: int, texts: list[str], base: np.ndarray) -> float:
    """``bench.pipeline.build_collection`` through the async contract: ``size`` chunks, 1,000 per document, the
    same ones in the same order in every store. The seconds it took."""
    started, rng = time.perf_counter(), np.random.default_rng(0)
    for start in range(0, size, CHUNKS_PER_SYNTHETIC_DOC):
        count = min(CHUNKS_PER_SYNTHETIC_DOC, size - start)
        source = f"synthetic-{start // CHUNKS_PER_SYNTHETIC_DOC:04d}"
        chunks = [Chunk(source, i, texts[(start + i) % len(texts)], None, 0, len(texts[(start + i) % len(texts)]))
                  for i in range(count)]
        doc = ParsedDocument(source, source, "text/plain", [Page(None, "")], f"{source}-{size}")
        await collection.upsert_document(doc, chunks, synthetic_vectors(base, start, count, rng))
        done = start + count
        if done % BUILD_PROGRESS == 0 and done < size:
            print(f"      {done:,} chunks ({time.perf_counter() - started:.0f} s)", flush=True)
    return time.perf_counter() - started


class PrecomputedQueries:
    """What the Retriever needs of ServiceClients for a search without rerank: the query vectors, here from a
    table filled beforehand, so that no embedding request is timed."""

    def __init__(self, claims: list[str], vectors: np.ndarray):
        self.vectors = dict(zip(claims, vectors))

    async def embed(self, texts: list[str], input_type: str) -> np.ndarray:
        return np.stack([self.vectors[text] for text in texts])


async def timed(calls, server_pid: int | None) -> dict:
    """Each awaitable factory in ``calls`` run once after a warm-up of the first, one at a time: ms each, and
    the CPU (% of one core) this process, the Milvus server (if one runs apart) and other processes took."""
    await calls[0]()
    latencies, meter = [], CpuMeter(server_pid)
    for call in calls:
        started = time.perf_counter()
        await call()
        latencies.append(1000 * (time.perf_counter() - started))
    cpu = meter.read()
    return {"requests": len(latencies), "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "mean_ms": float(np.mean(latencies)), "own_cpu_pct": cpu["own"], "server_cpu_pct": cpu["server"],
            "other_cpu_pct": cpu["others"]}


async def measure_store(settings: PipelineSettings, size: int, texts: list[str], base: np.ndarray,
                        claims: list[str], queries: np.ndarray, server_pid: int | None) -> dict:
    """One store at one size: build the collection, time the three searches, delete it."""
    from nimrag.pipeline.vectorstore import open_vector_store

    k = settings.vdb_top_k
    hybrid = SearchOptions(vdb_top_k=k, reranker_top_k=k, rerank=False, rerank_candidates=k,
                           threshold=float("-inf"), mode="hybrid")
    retriever = Retriever(PrecomputedQueries(claims, queries))  # type: ignore[arg-type]
    async with open_vector_store(settings) as store:
        collection = await store.create("synthetic", int(base.shape[1]))
        meter = CpuMeter(server_pid)
        build_s = await build(collection, size, texts, base)
        cpu = meter.read()
        result = {"build_s": build_s, "chunks_per_s": size / build_s, "build_own_cpu_pct": cpu["own"],
                  "build_server_cpu_pct": cpu["server"], "build_other_cpu_pct": cpu["others"]}
        print(f"    built {size:,} chunks in {build_s:.1f} s ({size / build_s:.0f} chunks/s)", flush=True)
        plans = {"dense_search": [lambda q=q: collection.dense_search(q, k) for q in queries],
                 "lexical_search": [lambda c=c: collection.lexical_search(c, k) for c in claims],
                 "hybrid (Retriever)": [lambda c=c: retriever.search([collection], c, hybrid) for c in claims]}
        for operation, calls in plans.items():
            result[operation] = await timed(calls, server_pid)
            r = result[operation]
            print(f"    {operation:<20} p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
                  f"(others {fmt(r['other_cpu_pct'], '.0f')}% CPU)", flush=True)
        await store.delete("synthetic")
    return result


async def measure_all(args, texts: list[str], base: np.ndarray, claims: list[str], queries: np.ndarray,
                      folder: Path) -> dict[int, dict[str, dict]]:
    results: dict[int, dict[str, dict]] = {}
    with contextlib.ExitStack() as stack:
        url, pid = (stack.enter_context(milvus_server(folder / "milvus-server")) if "milvus-server" in args.stores
                    else (None, None))
        for size in args.sizes:
            results[size] = {}
            for store in args.stores:
                print(f"  {store}, {size:,} chunks:", flush=True)
                settings = store_settings(store, folder / f"{size}", url)
                results[size][store] = await measure_store(settings, size, texts, base, claims, queries,
                                                           pid if store == "milvus-server" else None)
    return results


# --- base vectors ---------------------------------------------------------------------------------------------

def embed_base(args, texts: list[str], claims: list[str], log: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The first ``--base`` texts and the claims embedded by the embedding service, which is stopped before
    anything is timed."""
    with Service("embed", "embed", [], args.cache, log) as service:
        ready_s = service.wait_ready(args.ready_timeout)
        profile = selected_profile(service.port)
        print(f"  embed service ready after {ready_s:.1f} s, profile {profile}", flush=True)
        settings = PipelineSettings(embed_url=f"http://127.0.0.1:{service.port}/v1")
        base, seconds = embed_texts(settings, texts[:args.base])
        queries = asyncio.run(embed_queries(settings, claims))
    print(f"  embedded {len(base)} abstracts in {seconds:.1f} s and {len(claims)} claims", flush=True)
    return base, queries, {"profile": profile, "base_texts": len(base), "base_embed_s": seconds}


# --- report ---------------------------------------------------------------------------------------------------

def ratios(results: dict[int, dict[str, dict]]) -> dict[int, dict[str, dict[str, float]]]:
    """Per size and store: each row's figure divided by the baseline store's (build seconds, p50, p99)."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for size, stores in results.items():
        base = stores.get(BASELINE)
        if base is None:
            continue
        for store, r in stores.items():
            if store == BASELINE:
                continue
            row = {"build_s": r["build_s"] / base["build_s"]}
            for operation in OPERATIONS:
                for q in ("p50_ms", "p99_ms"):
                    row[f"{operation} {q}"] = r[operation][q] / base[operation][q]
            out.setdefault(size, {})[store] = row
    return out


def busy(r: dict) -> float | None:
    """CPU this process and the Milvus server (when apart) took, % of one core."""
    return None if r["own_cpu_pct"] is None else r["own_cpu_pct"] + (r["server_cpu_pct"] or 0.0)


def print_table(results: dict[int, dict[str, dict]], by: dict[int, dict[str, dict[str, float]]]) -> None:
    for size, stores in results.items():
        names = list(stores)
        others = [s for s in names if s != BASELINE and BASELINE in stores]
        header = (f"\n{size:,} chunks, flat  {'':<22}" + "".join(f"{s:>24}" for s in names)
                  + "".join(f"{s + ' / ' + BASELINE:>24}" for s in others))
        print(header + "\n" + "-" * len(header.strip("\n")))
        print(f"{'build (s)':<40}" + "".join(f"{stores[s]['build_s']:>24.1f}" for s in names)
              + "".join(f"{by[size][s]['build_s']:>24.2f}" for s in others))
        for operation in OPERATIONS:
            cells = "".join(f"{stores[s][operation]['p50_ms']:>11.2f} / {stores[s][operation]['p99_ms']:>9.2f}"
                            for s in names)
            ratio = "".join(f"{by[size][s][operation + ' p50_ms']:>11.2f} / {by[size][s][operation + ' p99_ms']:>9.2f}"
                            for s in others)
            print(f"{operation + ' p50 / p99 (ms)':<40}" + cells + ratio)
        print(f"{'own+server CPU % (dense, lexical, hybrid)':<40}" + "".join(
            f"{' / '.join(fmt(busy(stores[s][o]), '.0f') for o in OPERATIONS):>24}" for s in names))
        print(f"{'others CPU % (dense, lexical, hybrid)':<40}" + "".join(
            f"{' / '.join(fmt(stores[s][o]['other_cpu_pct'], '.0f') for o in OPERATIONS):>24}" for s in names))


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.store_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 10,000 chunks, 50 queries, 200 base texts")
    p.add_argument("--sizes", type=int_list, help="collection sizes in chunks (default 100000; quick 10000)")
    p.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, of {', '.join(STORES)}; "
                                                              f"ratios are taken against {BASELINE}")
    p.add_argument("--queries", type=int, help="SciFact test claims asked (default all 300; quick 50)")
    p.add_argument("--base", type=int, help="abstracts embedded as base vectors (default 1000; quick 200)")
    p.add_argument("--cache", type=Path, default=default_cache_path(), help="exported-model cache of the service")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the embedding service")
    args = p.parse_args(argv)
    args.stores = list(dict.fromkeys(s.strip() for s in args.stores.split(",") if s.strip()))
    if not args.stores or set(args.stores) - set(STORES):
        p.error(f"--stores takes {', '.join(STORES)}")
    for key, full, quick in (("sizes", [100000], [10000]), ("queries", 300, 50), ("base", 1000, 200)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.cache = args.cache.expanduser()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, stamp = time.perf_counter(), time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    data = load_scifact()
    texts, claims = synthetic_texts(data.docs), data.claims[:args.queries]
    print(f"store search: {', '.join(args.stores)} at {', '.join(f'{s:,}' for s in args.sizes)} chunks; "
          f"{machine_line(hw)}; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} OpenMP threads",
          flush=True)
    base, queries, embedding = embed_base(args, texts, claims, RESULTS / f"store-search-{stamp}-embed.server.log")
    with tempfile.TemporaryDirectory(prefix="nimrag-store-search-") as tmp:
        results = asyncio.run(measure_all(args, texts, base, claims, queries, Path(tmp)))
    by = ratios(results)
    print_table(results, by)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"store-search-{stamp}.json"
    meta = {"timestamp": stamp, "args": {**vars(args), "cache": str(args.cache)}, "hardware": hw.as_dict(),
            "machine": machine_line(hw), "faiss_threads": faiss.omp_get_max_threads(), "embedding": embedding,
            "k": PipelineSettings().vdb_top_k, "index": "flat", "baseline": BASELINE, "synthetic": {
                "texts": "SciFact title + abstract cut to 1,100 chars, reused in turn (bench.pipeline)",
                "vectors": f"real embeddings of {len(base)} abstracts + Gaussian noise of norm "
                           f"~{SYNTHETIC_NOISE_NORM}, normalized", "chunks_per_document": CHUNKS_PER_SYNTHETIC_DOC},
            "wall_s": time.perf_counter() - started}
    out.write_text(json.dumps({"meta": meta, "results": {str(s): r for s, r in results.items()},
                               "ratios": {str(s): r for s, r in by.items()}}, indent=1))
    print(f"\nresults: {out.relative_to(REPO)}  (wall {meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)

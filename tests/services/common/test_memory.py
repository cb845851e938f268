"""The memory bound (nimrag.services.common.memory), for real: glibc's malloc_trim returns freed heap pages, ONNX
Runtime's arena shrinks with the bound's run options, the idle rule, and a served model trimming once idle."""

from __future__ import annotations

import ctypes
import time

import httpx
import numpy as np
import orjson
import pytest

from nimrag.services.common import memory
from tests.conftest import start_service

MIB = memory.MIB
needs_glibc = pytest.mark.skipif(memory.glibc() is None, reason="malloc_trim is glibc's")


@needs_glibc
def test_malloc_trim_returns_freed_heap_pages():
    libc = memory.glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(1024)]  # 64 MiB of blocks below the mmap threshold
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)  # resident only once written
    sentinel = libc.malloc(64 * 1024)  # above them all, so free() cannot give them back by lowering the heap
    for block in blocks:
        libc.free(block)
    before = memory.resident_bytes()
    memory.release_free_memory()
    after = memory.resident_bytes()
    libc.free(sentinel)
    assert after <= before
    assert before - after > 32 * MIB, f"trimmed only {(before - after) / MIB:.1f} MiB of 64 freed"


def doubling_model() -> bytes:
    """y = sum(x * 2): an intermediate as large as the input, from the session's arena, and a tiny output."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("ReduceSum", ["doubled"], ["y"])],
        "doubling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@needs_glibc
def test_onnx_arena_gives_its_growth_back_with_the_bound(monkeypatch):
    import onnxruntime as ort

    x = np.ones(32 * MIB // 4, dtype=np.float32)  # 32 MiB in, 32 MiB intermediate

    def growth_after_one_run() -> float:
        session = ort.InferenceSession(doubling_model(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": x[:256]}, memory.onnx_run_options())  # a warm-up: the arena's first region, kept
        memory.release_free_memory()
        before = memory.resident_bytes()
        assert session.run(None, {"x": x}, memory.onnx_run_options())[0][0] == pytest.approx(2 * x.size)
        memory.release_free_memory()
        return (memory.resident_bytes() - before) / MIB

    monkeypatch.setattr(memory, "_shrink_onnx_arena", False)
    unbounded = growth_after_one_run()
    memory.shrink_onnx_arena()  # what the bound does at start-up (monkeypatch restores the flag afterwards)
    bounded = growth_after_one_run()
    assert unbounded > 24, f"the arena kept only {unbounded:.1f} MiB: this test no longer shows anything"
    assert bounded < unbounded / 2, f"bounded {bounded:.1f} MiB, unbounded {unbounded:.1f} MiB"


def test_idle_rule_trims_once_per_idle_spell():
    trimmer = memory.IdleTrimmer(cpu_seconds=100.0)
    assert trimmer.should_trim(100.0, interval_s=10)  # start-up loaded the model: the first idle look trims
    assert not trimmer.should_trim(100.1, interval_s=10)  # still idle, nothing new to return
    assert not trimmer.should_trim(108.0, interval_s=10)  # busy (79% of a core)
    assert not trimmer.should_trim(115.0, interval_s=10)  # busy
    assert trimmer.should_trim(115.2, interval_s=10)  # idle again (2%): trim
    assert not trimmer.should_trim(115.3, interval_s=10)


def test_resident_bytes_reads_proc():
    assert memory.resident_bytes() > 10 * MIB
    assert memory.resident_bytes("self", "VmHWM") >= memory.resident_bytes()
    assert memory.resident_bytes(2**22 + 12345) is None  # no such process
    assert memory.resident_bytes("self", "NoSuchField") is None


def trim_records(svc) -> list[dict]:
    lines = [orjson.loads(line) for line in svc.log().splitlines() if line.startswith("{")]
    return [r for r in lines if r.get("msg") == "returned freed memory to the OS"]


@needs_glibc
def test_served_model_trims_once_idle_after_load(service_tmp):
    svc = start_service("embed", service_tmp, env={"NIMRAG_EMBED_MEMORY_TRIM_INTERVAL_S": "0.5"})
    try:
        assert '"msg":"memory bound on"' in svc.log() and '"malloc_arena_max":2' in svc.log()
        texts = [" ".join(["protein expression in tumour cells"] * 60)] * 32  # long texts: large batches
        seen = None
        for _ in range(3):
            seen = len(trim_records(svc))  # before the last request: its trim cannot have come yet
            r = httpx.post(svc.base_url + "/v1/embeddings", json={"input": texts, "truncate": "END"}, timeout=120)
            assert r.status_code == 200
        deadline = time.monotonic() + 60
        while len(trim_records(svc)) == seen and time.monotonic() < deadline:
            time.sleep(0.2)
        records = trim_records(svc)
        assert len(records) > seen, "no trim after the load stopped:\n" + svc.log()[-2000:]
        assert records[-1]["rss_after_mib"] <= records[-1]["rss_before_mib"]
    finally:
        svc.stop()

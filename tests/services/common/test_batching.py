"""The shared dynamic batcher, driven by a real (simple, deterministic) batch function."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.batching import BatchLimits, DynamicBatcher, plan_batches
from services.common.errors import QueueFullError
from services.common.metrics import ServiceMetrics


def test_plan_batches_sorts_by_cost_and_respects_item_and_token_bounds():
    costs = [5, 1, 9, 3, 7, 2]
    batches = plan_batches(costs, max_items=2, max_tokens=100)
    assert batches == [[1, 5], [3, 0], [4, 2]]
    # Padded size (count x longest) bounds a batch: 3 x 9 > 20 forces a cut.
    assert plan_batches([9, 9, 9], max_items=10, max_tokens=20) == [[0, 1], [2]]
    # An item larger than the token bound still runs, alone.
    assert plan_batches([50, 1], max_items=10, max_tokens=20) == [[1], [0]]


def test_plan_batches_cuts_where_padding_would_waste_compute():
    # 10, 11, 12 pad to 36 for 33 real tokens (1.09x); adding 30 would pad to 120 for 63 (1.9x): cut there.
    assert plan_batches([10, 30, 11, 12, 31], max_items=64, max_tokens=10_000, max_padding_ratio=1.25) == \
        [[0, 2, 3], [1, 4]]


class Recorder:
    """Squares numbers and records the batches it was given; can be held closed to let a queue build up."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.thread_names: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(5)
        self.thread_names.add(threading.current_thread().name)
        self.batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("negative input")
        return [i * i for i in items]


async def _with_batcher(recorder, limits, body):
    batcher = DynamicBatcher(recorder, limits, ServiceMetrics("test"))
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_batches_and_get_their_own_results():
    recorder = Recorder()

    async def body(batcher):
        requests = [[i, i + 100] for i in range(10)]
        return await asyncio.gather(*(batcher.submit(r, [1, 1]) for r in requests))

    results = asyncio.run(_with_batcher(recorder, BatchLimits(max_items=64, max_wait_s=0.01), body))
    assert results == [[i * i, (i + 100) ** 2] for i in range(10)]
    assert len(recorder.batches) < 10, "requests were not merged"
    assert all(name.startswith("engine-batch") for name in recorder.thread_names)  # never the event loop


def test_batches_are_bounded_and_length_sorted():
    recorder = Recorder()

    async def body(batcher):
        return await batcher.submit(list(range(10)), [10 - i for i in range(10)])

    assert asyncio.run(_with_batcher(recorder, BatchLimits(max_items=4, max_padding_ratio=float("inf")), body)) == \
        [i * i for i in range(10)]
    assert [len(b) for b in recorder.batches] == [4, 4, 2]
    assert recorder.batches[0] == [9, 8, 7, 6]  # cheapest (shortest) first


def test_full_queue_refuses_with_queue_full_error():
    recorder = Recorder()
    recorder.gate.clear()  # the engine is busy: nothing drains

    async def body(batcher):
        first = asyncio.ensure_future(batcher.submit([1, 2, 3], [1, 1, 1]))
        await asyncio.sleep(0.05)  # taken by the engine, which is now blocked
        second = asyncio.ensure_future(batcher.submit([4, 5, 6], [1, 1, 1]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as err:
            await batcher.submit([7, 8], [1, 1])
        assert err.value.status_code == 429 and err.value.headers["Retry-After"]
        recorder.gate.set()
        return await first, await second

    assert asyncio.run(_with_batcher(recorder, BatchLimits(max_items=3, max_queue_items=4), body)) == \
        ([1, 4, 9], [16, 25, 36])


def test_cancelled_requests_are_skipped():
    recorder = Recorder()
    recorder.gate.clear()

    async def body(batcher):
        busy = asyncio.ensure_future(batcher.submit([1], [1]))
        await asyncio.sleep(0.05)
        abandoned = asyncio.ensure_future(batcher.submit([2], [1]))
        kept = asyncio.ensure_future(batcher.submit([3], [1]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        recorder.gate.set()
        return await busy, await kept

    assert asyncio.run(_with_batcher(recorder, BatchLimits(max_items=8, max_wait_s=0), body)) == ([1], [9])
    assert [2] not in recorder.batches and all(2 not in b for b in recorder.batches)


def test_engine_failure_fails_only_its_batch_and_the_batcher_keeps_serving():
    recorder = Recorder()

    async def body(batcher):
        with pytest.raises(ValueError):
            await batcher.submit([-1], [1])
        return await batcher.submit([3], [1])

    assert asyncio.run(_with_batcher(recorder, BatchLimits(max_wait_s=0), body)) == [9]

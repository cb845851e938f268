"""The shared dynamic batcher, driven by a real (simple, deterministic) batch function."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nimrag.services.common.batching import (
    BatchLimits,
    DynamicBatcher,
    ThroughputEstimator,
    plan_batches,
    wait_refusal,
)
from nimrag.services.common.errors import QueueFullError, QueueWaitTooLongError
from nimrag.services.common.metrics import ServiceMetrics


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


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_estimate_is_weighted_by_how_full_each_batch_was():
    clock = FakeClock()
    estimate = ThroughputEstimator(smoothing=0.5, clock=clock)
    assert estimate.rate is None and estimate.seconds_for(100) is None
    with estimate.measure(cost=100, fill=0.01):  # a tiny first batch: 50/s, all there is to go by
        clock.now += 2.0
    assert estimate.rate == pytest.approx(50)
    with estimate.measure(cost=400):  # a full batch, 200/s, outweighs it at once
        clock.now += 2.0
    assert estimate.rate == pytest.approx(199.25, abs=0.01)
    with estimate.measure(cost=800):  # 400/s: each full batch counts half
        clock.now += 2.0
    assert estimate.rate == pytest.approx(332.86, abs=0.01)
    before = estimate.rate
    estimate.record(cost=1, seconds=1, fill=0)  # an almost empty batch says next to nothing about a queue
    assert estimate.rate == pytest.approx(before, rel=1e-3) and estimate.rate < before
    assert estimate.seconds_for(before * 2) == pytest.approx(2, rel=1e-3)


def test_a_failed_batch_is_not_measured():
    clock = FakeClock()
    estimate = ThroughputEstimator(clock=clock)
    with pytest.raises(ValueError), estimate.measure(cost=100):
        clock.now += 1
        raise ValueError("engine failed")
    assert estimate.rate is None


def test_wait_refusal_admits_what_fits_and_says_when_there_will_be_room():
    assert wait_refusal(ahead=0, own=10_000, rate=10, max_wait_s=1) is None  # alone: waiting would not help
    assert wait_refusal(ahead=500, own=10, rate=None, max_wait_s=1) is None  # not measured yet
    assert wait_refusal(ahead=50, own=50, rate=100, max_wait_s=1) is None  # done in 1 s
    refused = wait_refusal(ahead=450, own=50, rate=100, max_wait_s=1)  # done in 5 s
    assert refused.status_code == 429 and refused.code == "queue_wait_too_long"
    assert refused.headers["Retry-After"] == "4"  # once 400 have drained, 50 ahead + 50 fit in 1 s
    assert "about 5.0 s" in refused.message
    # A request longer than the limit on its own fits once nothing is ahead of it.
    assert wait_refusal(ahead=300, own=500, rate=100, max_wait_s=1).headers["Retry-After"] == "3"
    assert wait_refusal(ahead=1, own=100, rate=100, max_wait_s=1).headers["Retry-After"] == "1"  # never 0


def test_batcher_refuses_work_that_would_wait_too_long_and_finishes_what_it_admitted():
    recorder = Recorder()
    recorder.gate.clear()  # the engine is busy: nothing drains

    async def body(batcher):
        batcher.throughput.record(cost=10, seconds=1)  # 10 cost units per second
        running = asyncio.ensure_future(batcher.submit([1], [5]))
        await asyncio.sleep(0.05)  # taken by the engine, which is now blocked
        fits = asyncio.ensure_future(batcher.submit([2], [5]))  # 5 ahead + 5: 1 s
        await asyncio.sleep(0.01)
        with pytest.raises(QueueWaitTooLongError) as err:
            await batcher.submit([3], [5])  # 10 ahead + 5: 1.5 s
        assert err.value.headers["Retry-After"] == "1"
        recorder.gate.set()
        results = await running, await fits
        admitted_after_drain = await batcher.submit([4], [5])
        return results, admitted_after_drain

    limits = BatchLimits(max_items=1, max_wait_s=0, max_queue_wait_s=1.0)
    assert asyncio.run(_with_batcher(recorder, limits, body)) == (([1], [4]), [16])


def test_back_to_back_batches_are_timed_from_the_previous_end():
    clock = FakeClock()
    estimate = ThroughputEstimator(clock=clock)
    previous_end = clock.now
    clock.now += 1.0  # between batches: taking the next round, answering the last one
    with estimate.measure(cost=300, since=previous_end):
        clock.now += 2.0
    assert estimate.rate == pytest.approx(100)  # 300 over 3 s of draining, not over the 2 s in the engine

"""Dynamic batching shared by the embedding and reranking services.

Requests from many clients are queued as entries of items with a cost (their token count). A collector task
takes a round of entries, sorts all their items by cost (so padding is small), cuts them into batches bounded by
items and padded tokens, and runs each batch in a worker thread: the event loop never does model work.

Admission is bounded twice, each with its own 429 and Retry-After: by queue depth (:class:`QueueFullError`), and
by expected wait (:class:`QueueWaitTooLongError`): work ahead of a request, in cost units, over the measured
throughput, must finish within ``max_queue_wait_s``, so the service never accepts work it will not finish before
clients give up.

Each engine batch is a span (``<service> batch``). A batch serves items of many requests, and a span has one
parent: it is parented on the first request it serves (so a trace of one request shows its batch), and linked to
every request it serves (each link carries that request's item count), so each request's trace reaches it too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry import context, trace

from nimrag.services.common.errors import QueueFullError, QueueWaitTooLongError
from nimrag.services.common.metrics import ServiceMetrics

T = TypeVar("T")
R = TypeVar("R")
module_tracer = trace.get_tracer("nimrag.batching")


@dataclass
class _Entry(Generic[T, R]):
    items: Sequence[T]
    costs: Sequence[int]
    future: asyncio.Future
    trace_context: context.Context = field(default_factory=context.get_current)  # the submitting request's
    results: list[Any] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)
        self.remaining = len(self.items)


@dataclass(frozen=True)
class BatchLimits:
    max_items: int = 64
    max_tokens: int = 16384  # padded tokens: items x longest item in the batch
    max_wait_s: float = 0.0  # how long to hold a not-full batch for more work
    max_queue_items: int = 8192
    # Cut a batch when padding would make it this many times its real tokens: compute spent on padding is
    # wasted, and a round of one-text requests of mixed length pads to ~2x (measured with bench/embed.py).
    max_padding_ratio: float = 1.25
    # Refuse work expected to wait longer than this (seconds) behind what is already queued or running.
    max_queue_wait_s: float = float("inf")


def plan_batches(costs: Sequence[int], max_items: int, max_tokens: int,
                 max_padding_ratio: float = float("inf")) -> list[list[int]]:
    """Indices sorted by cost, cut so that each batch's padded size (count x longest) stays in bounds."""
    order = sorted(range(len(costs)), key=costs.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for idx in order:
        cost = costs[idx]
        padded = (len(current) + 1) * cost  # sorted ascending, so this item is the longest so far
        if current and (len(current) >= max_items or padded > max_tokens or
                        padded > max_padding_ratio * (real + cost)):
            batches.append(current)
            current, real = [], 0
        current.append(idx)
        real += cost
    if current:
        batches.append(current)
    return batches


class ThroughputEstimator:
    """Cost units per second the engine sustains: an exponentially weighted average over completed batches.

    Each batch counts by how full it was: a long queue drains in full batches, while a batch of one pays more
    overhead per item, so light load must not make the estimate pessimistic. The average is bias-corrected (its
    weights are normalised), so the first batches count by their fill too: a tiny warm-up batch does not stick.
    """

    def __init__(self, smoothing: float = 0.3, clock: Callable[[], float] = time.perf_counter):
        self.smoothing = smoothing
        self.clock = clock
        self._weighted = 0.0  # decayed sum of weight x rate
        self._weight = 0.0  # decayed sum of weights

    @property
    def rate(self) -> float | None:
        """Cost units per second; None until a batch has completed."""
        return self._weighted / self._weight if self._weight > 0 else None

    def record(self, cost: float, seconds: float, fill: float = 1.0) -> None:
        if cost <= 0 or seconds <= 0:
            return
        weight = self.smoothing * min(1.0, max(fill, 1e-3))
        self._weighted = (1 - weight) * self._weighted + weight * cost / seconds
        self._weight = (1 - weight) * self._weight + weight

    @contextmanager
    def measure(self, cost: float, fill: float = 1.0, since: float | None = None):
        """Time a batch with the clock, from ``since`` if given (the previous batch's end, when batches run back
        to back: what lies between them is part of draining a queue too); recorded only if it completes."""
        started = self.clock() if since is None else since
        yield
        self.record(cost, self.clock() - started, fill)

    def seconds_for(self, cost: float) -> float | None:
        return None if self.rate is None else cost / self.rate


def wait_refusal(ahead: float, own: float, rate: float | None, max_wait_s: float) -> QueueWaitTooLongError | None:
    """The refusal for a request of cost ``own`` behind ``ahead``, or None to admit it.

    Admitted: nothing ahead (waiting would not make it faster), an unmeasured engine, or an expected finish
    within ``max_wait_s``. Retry-After is the time until enough of the work ahead has drained for it to fit.
    """
    if ahead <= 0 or rate is None or (ahead + own) / rate <= max_wait_s:
        return None
    room_ahead = max(0.0, max_wait_s * rate - own)  # work that may be ahead of it once it fits
    retry_after = max(1, math.ceil((ahead - room_ahead) / rate))
    return QueueWaitTooLongError((ahead + own) / rate, max_wait_s, retry_after)


class DynamicBatcher(Generic[T, R]):
    """Merges items from concurrent requests into engine batches; ``run_batch`` is called in one worker thread."""

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], limits: BatchLimits,
                 metrics: ServiceMetrics | None = None, name: str = "engine", tracer: trace.Tracer | None = None):
        self._run_batch = run_batch
        self.limits = limits
        self._metrics = metrics
        self._queue: deque[_Entry] = deque()
        self._queued_items = 0
        self._pending_cost = 0  # cost of admitted items not yet finished: queued or in a running round
        self._busy_since: float | None = None  # the last batch's end, while the engine has not idled since
        self.throughput = ThroughputEstimator()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-batch")
        self.name = name
        self._tracer = tracer or module_tracer
        self._task: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="batch-collector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for entry in self._queue:
            if not entry.future.done():
                entry.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, items: Sequence[T], costs: Sequence[int]) -> list[R]:
        """Queue items and wait for their results, in order. Raises QueueFullError when the queue is full."""
        if not items:
            return []
        self.admit(len(items), sum(costs))
        entry: _Entry[T, R] = _Entry(items, costs, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._set_queued(self._queued_items + len(items))
        self._pending_cost += sum(costs)
        self._wakeup.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # The client went away: its items are skipped if they have not been taken yet.
            entry.future.cancel()
            raise

    def admit(self, items: int, cost: int = 0) -> None:
        """Raise the 429 a request of ``items`` costing ``cost`` would get now. Callers check with cost 0 before
        tokenizing, so that work already too long to wait behind is refused without tokenizing it."""
        limit = self.limits.max_queue_items
        refusal: QueueFullError | QueueWaitTooLongError | None = None
        if self._queued_items + items > limit:
            refusal, reason = QueueFullError(self._queued_items, limit), "queue_full"
        else:
            refusal = wait_refusal(self._pending_cost, cost, self.throughput.rate, self.limits.max_queue_wait_s)
            reason = "queue_wait"
        if refusal is not None:
            if self._metrics:
                self._metrics.rejected.labels(reason).inc()
            raise refusal

    def _set_queued(self, n: int) -> None:
        self._queued_items = n
        if self._metrics:
            self._metrics.queue_depth.set(n)

    def _take_round(self) -> list[_Entry]:
        """FIFO entries up to a few batches' worth of items, so sorting has something to work with."""
        taken: list[_Entry] = []
        budget = self.limits.max_items * 4
        while self._queue and (not taken or budget > 0):
            entry = self._queue.popleft()
            self._set_queued(self._queued_items - len(entry.items))
            if entry.future.done():  # cancelled while waiting
                self._pending_cost -= sum(entry.costs)
                continue
            taken.append(entry)
            budget -= len(entry.items)
        return taken

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._busy_since = None
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._queued_items < self.limits.max_items and self.limits.max_wait_s > 0:
                await asyncio.sleep(self.limits.max_wait_s)  # let concurrent requests join this batch
            entries = self._take_round()
            if entries:
                await self._run_round(loop, entries)

    async def _run_round(self, loop: asyncio.AbstractEventLoop, entries: list[_Entry]) -> None:
        flat = [(e, i) for e in entries for i in range(len(e.items))]
        costs = [e.costs[i] for e, i in flat]
        limits = self.limits
        for batch in plan_batches(costs, limits.max_items, limits.max_tokens, limits.max_padding_ratio):
            try:
                members = [flat[j] for j in batch if not flat[j][0].future.done()]
                if members:
                    await self._run_members(loop, members)
            finally:
                self._pending_cost -= sum(costs[j] for j in batch)

    async def _run_members(self, loop: asyncio.AbstractEventLoop, members: list[tuple[_Entry, int]]) -> None:
        cost = sum(e.costs[i] for e, i in members)
        padded = len(members) * max(e.costs[i] for e, i in members)
        fill = max(len(members) / self.limits.max_items, padded / self.limits.max_tokens)
        started = time.perf_counter()
        try:
            with self._batch_span(members, cost, padded), \
                    self.throughput.measure(cost, fill, since=self._busy_since):
                results = await loop.run_in_executor(self._executor, self._run_batch,
                                                     [e.items[i] for e, i in members])
        except Exception as exc:  # engine failure: fail this batch's requests, keep serving
            self._busy_since = None
            for e, _ in members:
                if not e.future.done():
                    e.future.set_exception(exc)
            return
        self._busy_since = self.throughput.clock()
        if self._metrics:
            self._metrics.batch_size.observe(len(members))
            self._metrics.batch_latency.observe(time.perf_counter() - started)
        for (e, i), result in zip(members, results):
            e.results[i] = result
            e.remaining -= 1
            if e.remaining == 0 and not e.future.done():
                e.future.set_result(e.results)

    def _batch_span(self, members: list[tuple[_Entry, int]], cost: int, padded: int):
        """The batch's span: the child of the first request it serves, linked to each (see the module's doc)."""
        entries = {id(entry): entry for entry, _ in members}  # in order of first item
        counts = Counter(id(entry) for entry, _ in members)
        links = [trace.Link(trace.get_current_span(entry.trace_context).get_span_context(),
                            {"nimrag.batch.request_items": counts[key]}) for key, entry in entries.items()]
        return self._tracer.start_as_current_span(
            f"{self.name} batch", context=members[0][0].trace_context, links=links,
            attributes={"nimrag.batch.items": len(members), "nimrag.batch.requests": len(entries),
                        "nimrag.batch.tokens": cost, "nimrag.batch.padded_tokens": padded})

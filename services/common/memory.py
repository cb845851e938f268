"""Keep a service's resident memory bounded: ONNX Runtime's arena shrunk after each run, glibc's arenas capped,
and freed memory handed back to the OS once the service goes idle.

Without it, resident memory grew by hundreds of MiB over a long varied load and stayed there (measured:
``python -m bench.soak``). Two things here keep what they once needed (the third, llama.cpp's prompt cache, is
the LLM's ``prompt_cache_mib``):

- ONNX Runtime's CPU arena grows (in powers of two) to the largest batch it has run, attention scores included,
  and never gives anything back: embedding random batches of up to 64 texts took an engine from 420 to 1,040 MiB,
  and ``malloc_trim`` could not touch it;
- glibc gives allocating threads arenas of their own (up to 8 per core) and keeps what is freed inside them;
  after a large block is freed it raises its mmap threshold (up to 32 MiB), so later large buffers come from the
  arenas too.

The bound, for the whole process (like the allocator it configures):

- ONNX Runtime runs with ``memory.enable_memory_arena_shrinkage``: after each run the arena frees what it grew
  beyond its first chunk (the same engine and batches: 440-500 MiB under load, about 3% more CPU per batch);
- at start-up, ``mallopt`` caps glibc's arenas at ``malloc_arena_max`` (as ``MALLOC_ARENA_MAX``);
- every ``memory_trim_interval_s`` a look at the process's CPU time: once it has been idle for an interval (under
  ``IDLE_CPU_PCT`` of one core) after being busy, a worker thread collects Python's garbage and calls
  ``malloc_trim(0)``, which returns every free page of every arena to the OS. Never under load: trimming holds
  each arena's lock while it walks it.

Not done: a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_``) keeps large blocks out of the arenas, but every
batch then maps and faults in fresh pages: with ONNX Runtime's arena off, a 1 MiB threshold made the engine
several times slower (144 s against 21 s for the same batches, once, on a busy machine).
Elsewhere than glibc (musl, ...) there is nothing to call for the last two: the bound logs that and skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import time
from pathlib import Path

M_ARENA_MAX = -8  # mallopt's parameter, from glibc's <malloc.h>
IDLE_CPU_PCT = 5.0  # a process using less of one core than this over a whole interval is idle
MIB = 1024 * 1024

log = logging.getLogger("nimrag.memory")


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, when it is glibc (the one with mallopt and malloc_trim)."""
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_shrink_onnx_arena = False  # set when the bound starts, for the whole process


def shrink_onnx_arena() -> None:
    """From now on, every ONNX Runtime run of this process frees its arena's growth when it ends."""
    global _shrink_onnx_arena
    _shrink_onnx_arena = True


@functools.cache
def _shrinking_run_options():
    import onnxruntime as ort  # only where ONNX Runtime runs: the LLM service never imports it

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def onnx_run_options():
    """The ``run_options`` for every ONNX Runtime ``session.run``: None (the default) unless the bound is on."""
    return _shrinking_run_options() if _shrink_onnx_arena else None


def configure_allocator(arena_max: int) -> bool:
    """Cap glibc's arenas for this process; False where that cannot be done. Arenas already made stay, so this
    runs before the engine starts its threads."""
    libc = glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arena_max))


def release_free_memory() -> bool:
    """``malloc_trim(0)``: hand every free page of every arena back to the OS; True when some was."""
    libc = glibc()
    return bool(libc and libc.malloc_trim(0))


def resident_bytes(pid: int | str = "self", key: str = "VmRSS") -> int | None:
    """A memory figure of a process from /proc/<pid>/status (VmRSS: resident now, VmHWM: the most it ever was),
    in bytes; None when the process or the field is not there."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024  # the kernel writes kB
    return None


class IdleTrimmer:
    """Decides, one look at a time, when to trim: the first idle interval after a busy one (or after start-up,
    which loaded the model). Fed the process's CPU seconds so far at each look."""

    def __init__(self, cpu_seconds: float):
        self.last_cpu = cpu_seconds
        self.pending = True  # start-up allocated and freed plenty: trim once it has settled

    def should_trim(self, cpu_seconds: float, interval_s: float) -> bool:
        used_pct = 100 * (cpu_seconds - self.last_cpu) / interval_s
        self.last_cpu = cpu_seconds
        if used_pct >= IDLE_CPU_PCT:
            self.pending = True
            return False
        trim, self.pending = self.pending, False
        return trim


def trim_and_report() -> tuple[int | None, int | None, bool]:
    """Collect Python's garbage, then ``malloc_trim``: resident bytes before and after, and whether it released
    anything. An idle process allocates nothing, so Python's cyclic collector would not run by itself, and
    cycles (an exception's traceback and its frames) can hold a batch's arrays until it does."""
    before = resident_bytes()
    gc.collect()
    released = release_free_memory()
    return before, resident_bytes(), released


async def trim_when_idle(interval_s: float) -> None:
    """Forever: every ``interval_s``, trim if the process has just gone idle (see :class:`IdleTrimmer`)."""
    trimmer = IdleTrimmer(time.process_time())
    while True:
        await asyncio.sleep(interval_s)
        if trimmer.should_trim(time.process_time(), interval_s):
            before, after, released = await asyncio.to_thread(trim_and_report)
            log.info("returned freed memory to the OS", extra={
                "released": released, "rss_before_mib": round((before or 0) / MIB, 1),
                "rss_after_mib": round((after or 0) / MIB, 1)})
            trimmer.last_cpu = time.process_time()  # the trim's own CPU is not the service being busy


class MemoryBound:
    """The bound's life in a service: ``start()`` before the model loads, ``await stop()`` on shutdown."""

    def __init__(self, enabled: bool, arena_max: int, trim_interval_s: float):
        self.enabled, self.arena_max, self.trim_interval_s = enabled, arena_max, trim_interval_s
        self._task: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings) -> "MemoryBound":
        return cls(settings.memory_bound, settings.malloc_arena_max, settings.memory_trim_interval_s)

    def start(self) -> None:
        rss_mib = round((resident_bytes() or 0) / MIB, 1)
        if not self.enabled:
            log.info("memory bound off", extra={"rss_mib": rss_mib})
            return
        shrink_onnx_arena()
        if not configure_allocator(self.arena_max):
            log.warning("memory bound: the C library is not glibc (no mallopt/malloc_trim); only ONNX Runtime's "
                        "arena is bounded")
            return
        log.info("memory bound on", extra={"malloc_arena_max": self.arena_max, "rss_mib": rss_mib,
                                           "trim_interval_s": self.trim_interval_s})
        self._task = asyncio.create_task(trim_when_idle(self.trim_interval_s), name="memory-trim")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

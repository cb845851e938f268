"""The serving layer's common part: owns the engine's life cycle (load, warm-up, ready, stop)."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from enum import Enum

from nimrag.services.common.batching import BatchLimits, DynamicBatcher
from nimrag.services.common.errors import ModelNotFoundError, ServiceNotReadyError
from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.profiles import ProfileChoice
from nimrag.services.common.settings import ServiceSettings

# Below this many characters, tokenizing on the event loop is cheaper than a hop to a worker thread.
INLINE_WORK_CHARS = 4096


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelServing(ABC):
    """One served model: subclasses load the engine (in a worker thread) and implement the endpoints' work."""

    service: str = "service"

    def __init__(self, *, choice: ProfileChoice, hardware: HardwareInfo, metrics: ServiceMetrics,
                 served_model_name: str):
        self.choice = choice
        self.profile = choice.profile
        self.hardware = hardware
        self.metrics = metrics
        self.served_model_name = served_model_name
        self.state = ModelState.LOADING
        self.load_error: str | None = None
        # The server the engine forwards to (nimrag.services.common.triton.TritonModel), if any: its readiness is ours.
        self.upstream = None
        self.created = int(time.time())
        self.log = logging.getLogger(f"nimrag.{self.service}")

    # --- life cycle -------------------------------------------------------------------------------------------
    @abstractmethod
    def load_blocking(self) -> None:
        """Load and warm up the engine; runs in a worker thread, never on the event loop."""

    async def on_loaded(self) -> None:
        """Runs on the event loop once the engine is loaded (start batchers here)."""

    async def stop(self) -> None:
        """Release the engine and background tasks."""

    async def load(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.load_blocking)
            await self.on_loaded()
        except Exception as exc:  # keep the process up and say why in /v1/health/ready
            self.state, self.load_error = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
            self.log.exception("model failed to load", extra={"profile": self.profile.id})
            return
        self.state = ModelState.READY
        self.metrics.info.labels(self.service, self.served_model_name, self.profile.id).set(1)
        self.log.info("model ready", extra={"model": self.served_model_name, "profile": self.profile.id,
                                            "load_seconds": round(time.perf_counter() - started, 2)})

    def ensure_ready(self) -> None:
        if self.state is ModelState.FAILED:
            raise ServiceNotReadyError(f"The model failed to load: {self.load_error}", retry_after_s=60,
                                       code="model_load_failed")
        if self.upstream is not None and (error := self.upstream.readiness_error()) is not None:
            raise error  # Triton down or its model not ready: while loading, and whenever it is lost later
        if self.state is not ModelState.READY:
            raise ServiceNotReadyError()

    # --- model identity ---------------------------------------------------------------------------------------
    def served_names(self) -> list[str]:
        return [self.served_model_name]

    def resolve_model(self, requested: str | None) -> str:
        """The served model a request's ``model`` field names (None means the default)."""
        if requested is None or requested in self.served_names():
            return self.served_model_name
        raise ModelNotFoundError(requested, self.served_names())

    def model_cards(self) -> list[dict]:
        return [{"id": name, "object": "model", "created": self.created, "owned_by": "nimrag",
                 "root": self.served_model_name, "parent": None} for name in self.served_names()]

    def metadata(self) -> dict:
        """Service-specific details merged into ``/v1/metadata``."""
        return {}


class BatchedServing(ModelServing):
    """A served model whose engine work goes through the shared dynamic batcher (embed, rerank)."""

    def __init__(self, *, settings: ServiceSettings, model, choice: ProfileChoice, hardware: HardwareInfo,
                 metrics: ServiceMetrics):
        super().__init__(choice=choice, hardware=hardware, metrics=metrics, served_model_name=model.name)
        self.settings = settings
        self.model = model
        self.batcher: DynamicBatcher | None = None

    @abstractmethod
    def run_batch(self, items: list) -> list:
        """One engine batch; runs in the batcher's worker thread."""

    async def on_loaded(self) -> None:
        settings, profile = self.settings, self.profile
        wait_ms = profile.batch_wait_ms if settings.max_batch_wait_ms is None else settings.max_batch_wait_ms
        limits = BatchLimits(max_items=settings.max_batch_items or profile.max_batch_items,
                             max_tokens=profile.max_batch_tokens, max_wait_s=wait_ms / 1000,
                             max_queue_items=settings.max_queue_items, max_padding_ratio=profile.max_padding_ratio,
                             max_queue_wait_s=settings.max_queue_wait_s)
        self.batcher = DynamicBatcher(self.run_batch, limits, self.metrics, name=self.service)
        self.batcher.start()

    async def stop(self) -> None:
        if self.upstream is not None:
            self.upstream.close()  # also ends a load still waiting for Triton
        if self.batcher:
            await self.batcher.stop()

    def admit(self, items: int) -> None:
        """Refuse (429) before any tokenizing when the queue is already too full or too long to wait behind."""
        self.batcher.admit(items)

    @staticmethod
    async def off_loop_if(large: bool, work, *args):
        """Small work inline (a thread hop costs more); large work in a worker thread, so the loop stays free."""
        return await asyncio.to_thread(work, *args) if large else work(*args)

"""The serving life cycle without timing: not ready (503) until the engine has loaded and warmed up, then ready;
a load that fails says why. (The services' end-to-end tests cannot always catch the 503: a small model can be
ready before the first probe.)"""

from __future__ import annotations

import asyncio
import threading

import pytest

from nimrag.services.common.encoder_profiles import ENCODER_PROFILES
from nimrag.services.common.errors import ServiceNotReadyError
from nimrag.services.common.hardware import probe
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.profiles import select_profile
from nimrag.services.common.serving import ModelServing, ModelState


class GatedServing(ModelServing):
    """An engine load that finishes (or fails) only when the test says so."""

    service = "gated"

    def __init__(self, gate: threading.Event, fail: bool = False):
        hardware = probe()
        super().__init__(choice=select_profile(ENCODER_PROFILES, hardware), hardware=hardware,
                         metrics=ServiceMetrics("gated"), served_model_name="gated-model")
        self.gate, self.fail = gate, fail

    def load_blocking(self) -> None:
        assert self.gate.wait(30)
        if self.fail:
            raise RuntimeError("weights are corrupt")


def test_not_ready_until_loaded_then_ready():
    async def run():
        gate = threading.Event()
        serving = GatedServing(gate)
        loading = asyncio.create_task(serving.load())
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceNotReadyError) as refused:
            serving.ensure_ready()
        assert refused.value.status_code == 503 and refused.value.code == "model_not_ready"
        gate.set()
        await loading
        serving.ensure_ready()
        assert serving.state is ModelState.READY

    asyncio.run(run())


def test_a_failed_load_stays_not_ready_and_says_why():
    async def run():
        gate = threading.Event()
        gate.set()
        serving = GatedServing(gate, fail=True)
        await serving.load()
        with pytest.raises(ServiceNotReadyError) as refused:
            serving.ensure_ready()
        assert refused.value.code == "model_load_failed" and "weights are corrupt" in refused.value.message

    asyncio.run(run())

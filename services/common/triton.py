"""A model in a Triton Inference Server, called over gRPC with ``tritonclient``: the part every ``triton`` backend
(embed, rerank, the LLM's ``trtllm``) shares.

- Clients: one per thread at a time, from an idle pool (a ``tritonclient`` gRPC client holds one stream at a
  time); each its own channel, reconnecting within :data:`MAX_RECONNECT_BACKOFF_MS` once Triton is back (gRPC's
  default backoff grows to two minutes).
- Readiness: :meth:`TritonModel.wait_ready` at load (a 503 naming Triton meanwhile), then a monitor thread probes
  the server and the model every ``health_interval_s``; :meth:`TritonModel.readiness_error` is what the service's
  ``/v1/health/ready`` and every request answer while Triton is down or the model is not ready. A request that
  finds Triton gone marks it down at once.
- Every call has a deadline (``timeout_s``), so nothing waits on a Triton that does not answer; failures map to
  the one error shape: Triton unreachable or late is a 503 (``triton_unavailable`` / ``triton_timeout``),
  anything else a 500 whose log line names the model.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from nimrag.services.common.errors import InvalidRequestError, ServiceNotReadyError, StartupError

MAX_MESSAGE_BYTES = 2**31 - 1  # tritonclient's own default: token embeddings of a big batch exceed gRPC's 4 MiB
MAX_RECONNECT_BACKOFF_MS = 2000
PROBE_TIMEOUT_S = 5.0  # one readiness probe or model-config call (small answers, whatever the model's speed)
WAIT_LOG_EVERY_S = 30.0  # while waiting for Triton at load, say so this often
log = logging.getLogger("nimrag.triton")


class TritonSettings(BaseModel):
    """The settings of a service's ``triton`` backend (each service adds ``triton_model`` with its default)."""

    triton_url: str | None = Field(None, description="Triton Inference Server's gRPC address (host:port); set, "
                                   "it selects the Triton profile.")
    triton_timeout_s: float = Field(60.0, gt=0, description="Deadline of each call to Triton (for the LLM: the "
                                    "longest wait for the next streamed piece); past it, a 503.")
    triton_health_interval_s: float = Field(2.0, gt=0, description="Seconds between probes of Triton's server "
                                            "and model readiness, which /v1/health/ready reports.")


class TritonUnavailable(StartupError):
    """Triton cannot be reached, or does not serve a usable model."""


@dataclass(frozen=True)
class ModelInterface:
    """What a Triton model declares: its inputs (name -> numpy type), its outputs, its batch dimension."""

    inputs: dict[str, type]
    outputs: frozenset[str]
    max_batch_size: int  # 0: no batch dimension
    config: dict


def infer_input(name: str, array: np.ndarray):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def status_name(error) -> str:
    """``UNAVAILABLE`` for tritonclient's ``StatusCode.UNAVAILABLE``."""
    return str(error.status() or "").rpartition(".")[2]


class TritonModel:
    def __init__(self, url: str, name: str, *, timeout_s: float = 60.0, health_interval_s: float = 2.0):
        self.url = url
        self.name = name
        self.timeout_s = timeout_s
        self.health_interval_s = health_interval_s
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._problem: str | None = None  # why Triton cannot serve now; None: fine, or not probed yet
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings) -> TritonModel:
        if not settings.triton_url:
            raise TritonUnavailable(f"the Triton profile needs {settings.model_config['env_prefix']}TRITON_URL "
                                    "(Triton's gRPC host:port)")
        return cls(settings.triton_url, settings.triton_model, timeout_s=settings.triton_timeout_s,
                   health_interval_s=settings.triton_health_interval_s)

    @property
    def where(self) -> str:
        return f"Triton at {self.url} serving '{self.name}'"

    # --- clients ------------------------------------------------------------------------------------------
    def new_client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url, channel_args=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)])

    def take_client(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self.new_client()

    def give_back(self, client) -> None:
        self._idle.put(client)

    @contextlib.contextmanager
    def client(self) -> Iterator:
        client = self.take_client()
        try:
            yield client
        except BaseException:
            client.close()  # its channel may be broken: the next call makes a fresh one
            raise
        self.give_back(client)

    # --- readiness ----------------------------------------------------------------------------------------
    def probe(self) -> str | None:
        """Ask Triton now; the problem (also kept for :meth:`readiness_error`), or None when it can serve."""
        from tritonclient.utils import InferenceServerException

        try:
            with self.client() as client:
                if not client.is_server_ready(client_timeout=PROBE_TIMEOUT_S):
                    problem = "the server is not ready"
                elif not client.is_model_ready(self.name, client_timeout=PROBE_TIMEOUT_S):
                    problem = f"model '{self.name}' is not ready (is it in the model repository?)"
                else:
                    problem = None
        except InferenceServerException as exc:
            problem = f"not reachable: {exc.message()}"
        self._set_problem(problem)
        return problem

    def _set_problem(self, problem: str | None) -> None:
        if problem != self._problem:
            if problem:
                log.warning("Triton cannot serve", extra={"triton": self.where, "problem": problem})
            elif self._problem:
                log.info("Triton serves again", extra={"triton": self.where})
        self._problem = problem

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the model is ready; ``timeout_s`` None waits as long as it takes (the service answers 503
        naming Triton meanwhile), a number raises :class:`TritonUnavailable` past it."""
        started = time.monotonic()
        logged = started
        while (problem := self.probe()) is not None:
            now = time.monotonic()
            if timeout_s is not None and now - started >= timeout_s:
                raise TritonUnavailable(f"{self.where}: {problem}")
            if now - logged >= WAIT_LOG_EVERY_S:
                log.warning("still waiting for Triton", extra={"triton": self.where, "problem": problem,
                                                               "waited_s": round(now - started)})
                logged = now
            if self._stop.wait(1.0):
                raise TritonUnavailable(f"{self.where}: stopped while waiting ({problem})")

    def start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name=f"triton-health-{self.name}", daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            self.probe()

    def readiness_error(self) -> ServiceNotReadyError | None:
        problem = self._problem
        if problem is None:
            return None
        return ServiceNotReadyError(f"{self.where}: {problem}", retry_after_s=max(1, round(self.health_interval_s)),
                                    code="triton_unavailable")

    # --- models -------------------------------------------------------------------------------------------
    def config(self, name: str | None = None) -> dict:
        with self.client() as client:
            return client.get_model_config(name or self.name, as_json=True, client_timeout=PROBE_TIMEOUT_S)["config"]

    def interface(self, name: str | None = None) -> ModelInterface:
        from tritonclient.utils import triton_to_np_dtype

        config = self.config(name)
        inputs = {i["name"]: triton_to_np_dtype(i["data_type"].removeprefix("TYPE_")) for i in config.get("input", ())}
        return ModelInterface(inputs, frozenset(o["name"] for o in config.get("output", ())),
                              int(config.get("max_batch_size") or 0), config)

    def attach(self, inputs: tuple[str, ...], any_output: tuple[str, ...], hint: str) -> ModelInterface:
        """For the batched encoders: wait until the model is ready (the service answers 503 naming Triton
        meanwhile), check it declares ``inputs``, one of ``any_output`` and a batch dimension, then keep watching
        its readiness. Raises :class:`TritonUnavailable` (the load fails, saying what is missing)."""
        self.wait_ready()
        interface = self.interface()
        missing = [n for n in inputs if n not in interface.inputs]
        if not interface.outputs & set(any_output):
            missing.append(" or ".join(any_output))
        if missing:
            raise TritonUnavailable(f"{self.where}: the model lacks {', '.join(missing)}; {hint}")
        if interface.max_batch_size <= 0:
            raise TritonUnavailable(f"{self.where}: the model has no batch dimension (max_batch_size 0); {hint}")
        self.start_monitor()
        return interface

    # --- inference ----------------------------------------------------------------------------------------
    def infer_rows(self, feeds: dict[str, np.ndarray], output: str, interface: ModelInterface) -> np.ndarray:
        """``output`` (as float32) for every row of ``feeds`` (batch first; those the model declares are sent, as
        the types it declares), in requests of at most its ``max_batch_size`` rows, all sent at once: Triton runs
        them on its instances and batches them with other clients' requests."""
        arrays = {n: a.astype(interface.inputs[n], copy=False) for n, a in feeds.items() if n in interface.inputs}
        rows, step = len(next(iter(arrays.values()))), interface.max_batch_size
        requests = [{n: a[start: start + step] for n, a in arrays.items()} for start in range(0, rows, step)]
        return np.concatenate(self._infer_all(requests, output)).astype(np.float32, copy=False)

    def _infer_all(self, requests: list[dict[str, np.ndarray]], output: str) -> list[np.ndarray]:
        import tritonclient.grpc as grpcclient

        answers: queue.SimpleQueue = queue.SimpleQueue()
        with self.client() as client:
            for index, arrays in enumerate(requests):
                client.async_infer(self.name, [infer_input(n, a) for n, a in arrays.items()],
                                   callback=lambda result, error, i=index: answers.put((i, result, error)),
                                   outputs=[grpcclient.InferRequestedOutput(output)], client_timeout=self.timeout_s)
            results: list[np.ndarray | None] = [None] * len(requests)
            for _ in requests:
                try:  # the deadline ends every call; this only guards against a callback that never comes
                    index, result, error = answers.get(timeout=self.timeout_s + PROBE_TIMEOUT_S)
                except queue.Empty:
                    raise self.error_late() from None
                if error is not None:
                    raise self.error(error)
                results[index] = result.as_numpy(output)
        return results

    def error_late(self) -> ServiceNotReadyError:
        return ServiceNotReadyError(f"{self.where} did not answer within {self.timeout_s:g} s", code="triton_timeout")

    def error(self, error, *, invalid_is_client_error: bool = False) -> Exception:
        """The exception a failed call raises: 503 while Triton is gone or late, 400 for a request the model
        refuses where the request's own values reach it (the LLM), else a 500 naming the model."""
        status = status_name(error)
        if status in ("UNAVAILABLE", "NOT_FOUND"):
            problem = f"not reachable: {error.message()}" if status == "UNAVAILABLE" else \
                f"model '{self.name}' is not ready: {error.message()}"
            self._set_problem(problem)  # readiness says so at once, not at the next probe
            return ServiceNotReadyError(f"{self.where}: {problem}", code="triton_unavailable")
        if status == "DEADLINE_EXCEEDED":
            return self.error_late()
        if invalid_is_client_error and status == "INVALID_ARGUMENT":
            return InvalidRequestError(f"The model in Triton rejected the request: {error.message()}")
        return RuntimeError(f"{self.where} failed ({status or 'error'}): {error.message()}")

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

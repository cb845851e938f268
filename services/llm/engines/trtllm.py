"""TensorRT-LLM in a Triton Inference Server, called over gRPC streaming: NIM's own GPU path.

Interface: token ids in, token ids out. ``generate`` already has token ids, so this engine calls the
``tensorrt_llm`` model of TensorRT-LLM's standard model repository (triton-inference-server/tensorrtllm_backend,
``all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt``), not the text-in ``ensemble``/``tensorrt_llm_bls``
models, and detokenizes incrementally here with the model's Hugging Face tokenizer (``NIMRAG_LLM_TOKENIZER``, else
the model folder). Streamed text is then exact across tokens (whole UTF-8 characters, SentencePiece spaces), which
the ensemble's per-token postprocessing is not. When ``NIMRAG_LLM_TRITON_MODEL`` names an ensemble (the default
``ensemble``), its step that takes ``input_ids`` is called instead.

What the model must declare (its config is read at load; optional inputs it lacks are not sent, values are cast
to the declared types since backend versions differ, e.g. INT32 or UINT32 for ``request_output_len``):

- inputs ``input_ids`` [1, n], ``input_lengths`` [1, 1], ``request_output_len`` [1, 1]; optional ``streaming``,
  ``exclude_input_in_output``, ``end_id``, ``pad_id``, ``temperature``, ``runtime_top_k``, ``runtime_top_p``,
  ``random_seed``, ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``, ``return_log_probs``;
- outputs ``output_ids`` [1, beam, n] and ``sequence_length`` [1, beam]; optional ``output_log_probs``;
- ``model_transaction_policy { decoupled: true }``: each streamed response carries only the new tokens, and the
  last one carries ``triton_final_response``.

TensorRT-LLM returns no finish reason and drops the end id from its output, so an answer shorter than
``max_tokens`` stopped at the end id ("stop"). Stop strings are matched here on the decoded text (exact across
token boundaries); a match cancels the request. Logprobs: the sampled token's only (TensorRT-LLM has no top-N).

Threads: every ``generate`` runs in its own worker thread and takes a gRPC client from the idle pool of
:class:`nimrag.services.common.triton.TritonModel` (a ``tritonclient`` client holds one stream at a time, so clients are
never shared between threads), returning it when done. That class also waits for Triton at load, watches its
readiness afterwards (``/v1/health/ready`` is a 503 naming Triton while it is down) and maps its errors; a stream
that sends nothing for ``NIMRAG_LLM_TRITON_TIMEOUT_S`` is cancelled with a 503.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import numpy as np

from nimrag.services.common.errors import StartupError
from nimrag.services.common.triton import TritonModel, TritonUnavailable, infer_input
from nimrag.services.llm.engines.base import (
    DEFAULT_CONTEXT_CAP,
    Emit,
    EngineInfo,
    Finished,
    LLMEngine,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    UnsupportedByEngine,
)
from nimrag.services.llm.engines.text import TextStream, apply_chat_template, tokenize_prompt
from nimrag.services.llm.model import LLMModelInfo
from nimrag.services.llm.settings import LLMSettings

REQUIRED_INPUTS = ("input_ids", "input_lengths", "request_output_len")


class TritonTrtLlmEngine(LLMEngine):
    name = "trtllm"

    def __init__(self, model: LLMModelInfo, settings: LLMSettings, *, slots: int,
                 ready_timeout: float | None = None):
        self.model = model
        self.settings = settings
        # The ensemble's token-level step once loaded. Its readiness is the service's (ModelServing.upstream).
        self.triton = self.upstream = TritonModel.from_settings(settings)
        self.slots = slots
        self.ready_timeout = ready_timeout  # None: wait for Triton as long as it takes
        self.features = frozenset()
        self.tokenizer = None
        self.info: EngineInfo | None = None
        self._dtypes: dict[str, type] = {}  # declared input name -> numpy type

    # --- loading ------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.triton.name

    def load(self) -> EngineInfo:
        self.tokenizer = self._load_tokenizer()
        self.triton.wait_ready(self.ready_timeout)
        config = self._token_model_config(self.triton)
        self.triton.start_monitor()
        interface = self.triton.interface()  # the token-level model's, now named
        self._check_interface(config, interface.inputs, interface.outputs)
        self._dtypes = interface.inputs
        if "return_log_probs" in interface.inputs and "output_log_probs" in interface.outputs:
            self.features = frozenset({"logprobs"})
        max_batch = interface.max_batch_size
        self.info = EngineInfo(context_length=self._context_length(), vocab_size=len(self.tokenizer),
                               slots=min(self.slots, max_batch) if max_batch > 0 else self.slots)
        return self.info

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        path = Path(self.settings.tokenizer or self.model.path)
        try:
            if path.is_file():  # a GGUF file carries its tokenizer
                return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load a Hugging Face tokenizer from {path} (set NIMRAG_LLM_TOKENIZER to "
                               f"the model's tokenizer folder): {exc}") from exc

    def _token_model_config(self, triton) -> dict:
        """The configured model's config, or that of the ensemble step which takes token ids (then named)."""
        config = triton.config(self.model_name)
        if "input_ids" in {i["name"] for i in config.get("input", ())} or config.get("platform") != "ensemble":
            return config
        for step in config.get("ensemble_scheduling", {}).get("step", ()):
            sub = triton.config(step["model_name"])
            if "input_ids" in {i["name"] for i in sub.get("input", ())}:
                self.triton.name = step["model_name"]
                return sub
        return config  # _check_interface says what is missing

    def _check_interface(self, config: dict, inputs: dict, outputs: set) -> None:
        missing = [n for n in REQUIRED_INPUTS if n not in inputs] + [n for n in ("output_ids",) if n not in outputs]
        where = f"Triton model '{self.model_name}' at {self.triton.url}"
        if missing:
            raise TritonUnavailable(f"{where} lacks {', '.join(missing)}: point NIMRAG_LLM_TRITON_MODEL at "
                                    "TensorRT-LLM's token-level 'tensorrt_llm' model (or an ensemble using it)")
        if not config.get("model_transaction_policy", {}).get("decoupled"):
            raise TritonUnavailable(f"{where} is not decoupled, so it cannot stream: set decoupled_mode:true "
                                    "in its config.pbtxt")

    def _context_length(self) -> int:
        """The configured length as given, else the model's trained one uncapped (not base.context_length: the
        engine was built for its length and the KV cache is TensorRT-LLM's), else DEFAULT_CONTEXT_CAP."""
        if self.settings.max_model_len:
            return self.settings.max_model_len
        for folder in (Path(self.settings.tokenizer or self.model.path), Path(self.model.path)):
            try:
                config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
                return int(config["max_position_embeddings"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return DEFAULT_CONTEXT_CAP

    # --- text ---------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict]) -> str:
        return apply_chat_template(self.tokenizer, messages)

    def tokenize(self, text: str) -> list[int]:
        return tokenize_prompt(self.tokenizer, text)

    def check(self, params: SamplingParams) -> None:
        super().check(params)
        if params.logprobs:
            raise UnsupportedByEngine("top_logprobs", self.name, "top_logprobs",
                                      "TensorRT-LLM returns only the sampled token's log-probability.")
        if params.min_p > 0:
            raise UnsupportedByEngine("min_p", self.name, "min_p")

    # --- generation ---------------------------------------------------------------------------------------
    def generate(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Finished:
        client = self.triton.take_client()
        responses: queue.SimpleQueue = queue.SimpleQueue()
        try:
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            client.async_stream_infer(self.model_name, self._request(prompt, params),
                                      enable_empty_final_response=True)
            finished, running = self._consume(responses, prompt, params, emit)
        except BaseException:
            _stop_stream(client, cancel=True)
            client.close()
            raise
        _stop_stream(client, cancel=running)
        self.triton.give_back(client)
        return finished

    def _request(self, prompt: list[int], p: SamplingParams) -> list:
        greedy = p.temperature <= 0  # TensorRT-LLM divides by the temperature: greedy is top-k 1
        end_id, pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        values = {
            "input_ids": [prompt], "input_lengths": [[len(prompt)]], "request_output_len": [[p.max_tokens]],
            "streaming": [[True]], "exclude_input_in_output": [[True]],
            "end_id": [[-1 if p.ignore_eos or end_id is None else end_id]],  # -1: no token ends the answer
            "pad_id": [[pad_id if pad_id is not None else end_id if end_id is not None else 0]],
            "temperature": [[1.0 if greedy else p.temperature]], "runtime_top_k": [[1 if greedy else p.top_k]],
            "runtime_top_p": [[p.top_p]], "repetition_penalty": [[p.repetition_penalty]],
            "presence_penalty": [[p.presence_penalty]], "frequency_penalty": [[p.frequency_penalty]],
        }
        if p.seed is not None:
            values["random_seed"] = values["seed"] = [[p.seed]]  # older and newer backends name it so
        if p.logprobs is not None:
            values["return_log_probs"] = [[True]]
        return [self._tensor(name, value) for name, value in values.items() if name in self._dtypes]

    def _tensor(self, name: str, value: list):
        return infer_input(name, np.array(value).astype(self._dtypes[name]))  # -1 wraps for unsigned types

    def _consume(self, responses: queue.SimpleQueue, prompt: list[int], params: SamplingParams,
                 emit: Emit) -> tuple[Finished, bool]:
        """Decode the stream into ``emit``; the answer, and whether the request still runs in Triton."""
        stream = TextStream(self.tokenizer, prompt, params.stop)
        count = held = 0  # generated tokens; those not yet covered by an emitted piece
        while True:
            try:
                result, error = responses.get(timeout=self.triton.timeout_s)
            except queue.Empty:  # the caller cancels the stream
                raise self.triton.error_late() from None
            if error is not None:
                raise self.triton.error(error, invalid_is_client_error=True)
            tokens, logprobs = self._new_tokens(result, params.logprobs is not None)
            final = _is_final(result)
            count += len(tokens)
            held += len(tokens)
            text, stopped = stream.add(tokens, final=final)
            if text or logprobs:
                if emit(TextDelta(text, tokens=held, logprobs=logprobs)):
                    return Finished("stop", count), not final
                held = 0
            if stopped or final:
                reason = "length" if not stopped and count >= params.max_tokens else "stop"
                return Finished(reason, count), not final

    def _new_tokens(self, result, want_logprobs: bool) -> tuple[list[int], tuple[TokenLogprob, ...]]:
        ids, lengths = result.as_numpy("output_ids"), result.as_numpy("sequence_length")
        if ids is None:  # the empty final response
            return [], ()
        tokens = ids[0, 0, : int(lengths[0, 0])].tolist() if lengths is not None else ids[0, 0].tolist()
        end_id = self.tokenizer.eos_token_id
        tokens = [t for t in tokens if t != end_id]  # older backends return the end id
        logprobs = result.as_numpy("output_log_probs") if want_logprobs else None
        if logprobs is None or not tokens:
            return tokens, ()
        values = logprobs[0, 0, -len(tokens):].tolist()  # per response, or cumulative: the last ones are ours
        pieces = [self.tokenizer.decode([t]) for t in tokens]
        return tokens, tuple(TokenLogprob(p, v, None if "\ufffd" in p else list(p.encode()))  # part of a character
                             for p, v in zip(pieces, values))

    def close(self) -> None:
        self.triton.close()


def _is_final(result) -> bool:
    flag = result.get_response().parameters.get("triton_final_response")
    return bool(flag and flag.bool_param)


def _stop_stream(client, *, cancel: bool) -> None:
    """Close the client's stream; with ``cancel``, cancel the request in Triton too (the answer is not wanted)."""
    stream = client._stream
    client.stop_stream(cancel_requests=cancel)
    if cancel and stream is not None:
        # tritonclient leaves gRPC's request-sending thread blocked on the cancelled stream's queue: end it.
        stream._request_queue.put(None)

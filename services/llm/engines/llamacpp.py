"""llama.cpp through the prebuilt ``xllamacpp`` wheel: the CPU engine (no compile step).

xllamacpp runs llama.cpp's own server in-process: parallel slots, continuous batching, prompt caching and
grammars. Generation goes through its in-process calls (a Python callback per piece; returning True cancels).
Tokenizing and chat templates go to the same server's loopback listener, which a random key keeps private.
"""

from __future__ import annotations

import json
import re
import secrets

import httpx

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.llm.engines.base import (
    Emit,
    EngineInfo,
    Finished,
    LLMEngine,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    context_length,
)
from nimrag.services.llm.model import LLMModelInfo

LLGUIDANCE = "%llguidance {}\n"  # the prefix that makes llama.cpp hand a grammar to llguidance


def choice_grammar(choices: list[str]) -> str:
    """llguidance's Lark syntax, whose string literals take JSON's escapes. Not GBNF: GBNF has no escape for
    backspace or form feed, and a NUL in a GBNF grammar aborts the whole llama.cpp process."""
    return LLGUIDANCE + "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _grammar_problem(error: str) -> str:
    # "at 2(8): failed to compile JSON schema: <problem, maybe over lines>" then the grammar, line-numbered
    problem = re.split(r"\n\s*\d+ \| ", error, maxsplit=1)[0]
    return " ".join(re.sub(r"^at \d+\(\d+\): (failed to compile JSON schema: )?", "", problem).split())


def check_grammar(params: SamplingParams) -> None:
    """Compile the constraint's grammar as llama.cpp's grammar engine (llguidance) will, for a 400 naming the
    problem: llama.cpp itself only logs a grammar it cannot compile and then samples unconstrained text."""
    import llguidance
    import xllamacpp

    constraint = params.constraint
    try:
        grammar = (xllamacpp.json_schema_to_grammar(constraint.value) if constraint.kind == "json_schema"
                   else choice_grammar(constraint.value))
    except Exception as exc:  # noqa: BLE001 - the converter's own refusal
        error = str(exc)
    else:
        error = llguidance.LLMatcher.validate_grammar(grammar) if grammar.startswith(LLGUIDANCE) else ""
    if error:
        code = "invalid_json_schema" if constraint.kind == "json_schema" else "invalid_grammar"
        raise InvalidRequestError(f"{constraint.param} cannot be enforced by the grammar engine: "
                                  f"{_grammar_problem(error)}", param=constraint.param, code=code)


class LlamaCppEngine(LLMEngine):
    name = "llamacpp"
    features = frozenset({"json_schema", "choice", "logprobs", "logit_bias"})

    def __init__(self, model: LLMModelInfo, *, slots: int, context_length: int | None, threads: int,
                 batch_tokens: int, prompt_cache_mib: int = 256, verbose: bool = False):
        self.model = model
        self.verbose = verbose
        self.slots = slots
        self.requested_context = context_length
        self.threads = threads
        self.batch_tokens = batch_tokens
        self.prompt_cache_mib = prompt_cache_mib
        self._server = None
        self._http: httpx.Client | None = None
        self.info: EngineInfo | None = None

    def load(self) -> EngineInfo:
        import xllamacpp

        context = context_length(self.requested_context, self._trained_context())
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model.path)
        params.n_parallel = self.slots
        params.n_ctx = context * self.slots  # split evenly: every slot gets its full context
        params.n_batch = params.n_ubatch = self.batch_tokens
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
        params.verbosity = 4 if self.verbose else 2  # llama.cpp's info level logs every request: warnings up
        params.cache_prompt = True
        params.cache_ram_mib = self.prompt_cache_mib  # llama.cpp's default, 8 GiB, is bounded only by n_ctx
        params.ctx_shift = False  # a full context ends the answer with "length"; never silently drops the prompt
        params.endpoint_metrics = False
        params.ui = False
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        key = secrets.token_urlsafe(24)
        params.api_keys = [key]
        self._server = xllamacpp.Server(params)
        self._http = httpx.Client(base_url=self._server.listening_address, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"})
        props = self._get("/props")
        vocab = int(self._get("/v1/models")["data"][0].get("meta", {}).get("n_vocab", 0))
        self.info = EngineInfo(context_length=int(props["default_generation_settings"]["n_ctx"]),
                               vocab_size=vocab, slots=int(props["total_slots"]),
                               quantization=str(props.get("model_ftype", "")))
        return self.info

    def _trained_context(self) -> int | None:
        """The model's training context, from the GGUF header (``<arch>.context_length``, a uint32); None if absent."""
        with open(self.model.path, "rb") as f:
            head = f.read(1 << 20)  # GGUF metadata precedes the tokenizer arrays; context length is early
        match = re.search(rb"\.context_length\x04\x00\x00\x00(.{4})", head, re.DOTALL)
        return int.from_bytes(match.group(1), "little") if match else None

    def _get(self, path: str) -> dict:
        response = self._http.get(path)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: dict) -> dict:
        response = self._http.post(path, json=body)
        if response.status_code == 400:
            raise InvalidRequestError(response.json().get("error", {}).get("message", response.text))
        response.raise_for_status()
        return response.json()

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self._post("/apply-template", {"messages": messages})["prompt"]

    def check(self, params: SamplingParams) -> None:
        super().check(params)
        if params.constraint:
            check_grammar(params)

    def tokenize(self, text: str) -> list[int]:
        return self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]

    def _request(self, prompt: list[int], p: SamplingParams) -> dict:
        body = {
            "prompt": prompt, "stream": True, "max_tokens": p.max_tokens, "temperature": p.temperature,
            "top_p": p.top_p, "top_k": p.top_k, "min_p": p.min_p, "stop": p.stop,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "repeat_penalty": p.repetition_penalty, "ignore_eos": p.ignore_eos, "cache_prompt": True,
            "logit_bias": [[token, bias] for token, bias in p.logit_bias.items()],
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if p.logprobs is not None:
            body["logprobs"] = max(p.logprobs, 1)  # llama.cpp reports the sampled token among its top N
        if p.constraint and p.constraint.kind == "json_schema":
            body["json_schema"] = p.constraint.value
        elif p.constraint and p.constraint.kind == "choice":
            body["grammar"] = choice_grammar(p.constraint.value)
        return body

    def generate(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Finished:
        state = {"reason": "length", "tokens": 0, "cached": 0, "error": None}
        want_logprobs = params.logprobs

        def on_chunk(chunk: dict) -> bool:
            if "error" in chunk:
                state["error"] = chunk["error"]
                return True
            usage = chunk.get("usage")
            if usage:
                state["tokens"] = usage.get("completion_tokens", state["tokens"])
                state["cached"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            for choice in chunk.get("choices", ()):
                if choice.get("finish_reason"):
                    state["reason"] = choice["finish_reason"]
                entries = (choice.get("logprobs") or {}).get("content") or ()
                text = choice.get("text") or ""
                if text or entries:
                    logprobs = tuple(_token_logprob(e, want_logprobs) for e in entries) if want_logprobs is not None else ()
                    if emit(TextDelta(text, tokens=max(1, len(entries)), logprobs=logprobs)):
                        return True
            return False

        result = self._server.handle_completions(self._request(prompt, params), on_chunk)
        error = state["error"] or (result.get("error") if isinstance(result, dict) else None)
        if error:
            raise InvalidRequestError(str(error.get("message", error)) if isinstance(error, dict) else str(error))
        return Finished(reason="stop" if state["reason"] == "stop" else "length",
                        completion_tokens=state["tokens"], cached_prompt_tokens=state["cached"])

    def close(self) -> None:
        if self._http:
            self._http.close()
        self._server = None  # llama.cpp's server stops when the object goes


def _token_logprob(entry: dict, top_n: int) -> TokenLogprob:
    top = tuple(TopLogprob(t["token"], t["logprob"], t.get("bytes")) for t in entry.get("top_logprobs", ())[:top_n])
    return TokenLogprob(entry["token"], entry["logprob"], entry.get("bytes"), top, entry.get("id"))

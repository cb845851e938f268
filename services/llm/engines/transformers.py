"""transformers (PyTorch): a Hugging Face folder or a GGUF file (dequantized on load), on CUDA or the CPU.

Concurrency is continuous batching in one decode thread. ``generate`` (called from up to ``slots`` serving threads)
queues its sequence and blocks on that sequence's own event queue, calling ``emit`` itself, so a slow client never
holds up the loop. Between steps the loop admits waiting sequences (each prompt prefilled on its own), merges each
one's KV cache into the batch's (rows left-padded to one length, the padding masked out, positions given per row)
and then decodes every running sequence together, one token each per forward pass. Sampling, detokenizing and stop
strings run per sequence in the loop; finished and cancelled sequences leave the batch before the next step.

On CUDA the weights are bf16/fp16, and a step waits on the GPU once: all rows' sampled tokens come back together.
Static caches and CUDA graphs are not used: the batch changes shape whenever a sequence joins or leaves, and that
would mean recompiling or recapturing all the time.

Limits: standard attention decoders (Llama, Qwen, Mistral, Phi, ...); sliding-window layers get a plain full cache.
Guided choice is enforced; JSON schemas and regular expressions are not (``check`` answers 400 for them).
"""

from __future__ import annotations

import inspect
import queue
import re
import threading

import torch

from nimrag.services.common.errors import InvalidRequestError, StartupError
from nimrag.services.common.profiles import Profile
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
from nimrag.services.llm.engines.text import TextStream, apply_chat_template, tokenize_prompt
from nimrag.services.llm.model import LLMModelInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte-fallback pieces
GREEDY_BELOW = 1e-5  # temperatures this low are greedy (dividing by them would overflow the logits)


class TransformersEngine(LLMEngine):
    name = "transformers"
    features = frozenset({"logprobs", "logit_bias", "choice"})

    def __init__(self, model: LLMModelInfo, profile: Profile, *, slots: int, context_length: int | None,
                 threads: int):
        self.model_info = model
        self.device = torch.device(profile.device)
        self.dtype = DTYPES.get(profile.precision, torch.float32)
        self.slots = slots
        self.requested_context = context_length
        self.threads = threads
        self.model = None  # the torch module, once loaded
        self.tokenizer = None
        self.info: EngineInfo | None = None
        self.eos: frozenset[int] = frozenset()
        self._forward_args: dict = {}
        self._cache_arg = "cache"
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tokenizer_lock = threading.Lock()  # Rust tokenizers may raise "Already borrowed" when shared
        self._pieces: dict[int, tuple[str, list[int] | None]] = {}

    # --- loading ------------------------------------------------------------------------------------------------
    def load(self) -> EngineInfo:
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        self.tokenizer, self.model = self._load_weights()
        self.model.to(self.device).eval()
        config = self.model.config.get_text_config()
        context = context_length(self.requested_context, getattr(config, "max_position_embeddings", None))
        self.eos = self._eos_ids()
        parameters = inspect.signature(self.model.forward).parameters
        # transformers 5 renamed past_key_values to cache; logits_to_keep spares the prompt's logits.
        self._forward_args = {"use_cache": True, **({"logits_to_keep": 1} if "logits_to_keep" in parameters else {})}
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self.info = EngineInfo(context_length=context, vocab_size=int(config.vocab_size), slots=self.slots,
                               quantization=self.model_info.quantization if self.model_info.format == "gguf" else "")
        self._thread = threading.Thread(target=self._loop, name="transformers-decode", daemon=True)
        self._thread.start()
        return self.info

    def _load_weights(self):
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
            PreTrainedTokenizerFast,
        )

        path = self.model_info.path
        if self.model_info.format == "hf":
            return (AutoTokenizer.from_pretrained(str(path), local_files_only=True),
                    AutoModelForCausalLM.from_pretrained(str(path), dtype=self.dtype, local_files_only=True))
        # from_pretrained(gguf_file=...) insists on the `accelerate` package; building the model from the file's
        # config and loading its dequantized tensors ourselves is the same load without it.
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        where = {"gguf_file": path.name, "local_files_only": True}
        # The generic fast tokenizer is what AutoTokenizer builds from a GGUF file too, minus a slow metadata parse.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path.parent), **where)
        config = AutoConfig.from_pretrained(str(path.parent), **where)
        model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model,
                                       torch_dtype=self.dtype)["tensors"]
        missing = model.load_state_dict(tensors, strict=False).missing_keys
        model.tie_weights()
        missing = [k for k in missing if not (config.tie_word_embeddings and k.startswith("lm_head."))]
        if missing:
            raise StartupError(f"{path.name} lacks weights this architecture needs: {', '.join(missing[:5])}")
        return tokenizer, model

    def _eos_ids(self) -> frozenset[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or ())
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return frozenset(ids)

    # --- text ---------------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict]) -> str:
        return apply_chat_template(self.tokenizer, messages)

    def tokenize(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return tokenize_prompt(self.tokenizer, text)

    def encode(self, text: str, special: bool) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

    def piece(self, token: int) -> tuple[str, list[int] | None]:
        """A token's own text and bytes, for logprobs (bytes unknown where it holds part of a character)."""
        if token not in self._pieces:
            text = self.decode([token], skip_special=False)
            raw = self.tokenizer.convert_ids_to_tokens(token) or ""
            if raw.startswith("\u2581") and not text.startswith(" "):
                text = " " + text  # SentencePiece drops a word's leading space when it decodes the word alone
            byte = BYTE_TOKEN.fullmatch(raw)
            data = [int(byte.group(1), 16)] if byte else None if "\ufffd" in text else list(text.encode())
            self._pieces[token] = (text, data)
        return self._pieces[token]

    # --- generation ---------------------------------------------------------------------------------------------
    def generate(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Finished:
        if self._thread is None:
            raise RuntimeError("the engine is not loaded, or was closed")
        if not prompt or not all(0 <= t < self.info.vocab_size for t in prompt):
            raise InvalidRequestError(f"The prompt must be 1 or more token ids from 0 to {self.info.vocab_size - 1}.",
                                      param="prompt")
        limit = min(params.max_tokens, self.info.context_length - len(prompt))
        if limit <= 0:
            return Finished("length", 0)
        seq = _Sequence(self, prompt, params, limit)
        self._inbox.put(seq)
        emitted = 0
        try:
            while True:
                event = seq.events.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Finished):
                    return event
                emitted += event.tokens
                if emit(event):
                    return Finished("stop", emitted)
        finally:
            seq.cancelled = True  # still running (a cancel, an error in emit): the loop drops it at its next step

    def forward(self, ids: torch.Tensor, cache, **kwargs) -> torch.Tensor:
        """The next-token logits (rows, vocab) in float32, the cache grown by ``ids``."""
        out = self.model(input_ids=ids, **{self._cache_arg: cache}, **self._forward_args, **kwargs)
        return out.logits[:, -1].float()

    def _loop(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)  # OpenMP settings are per thread
        batch = _Batch(self)
        with torch.inference_mode():
            while True:
                try:
                    if not self._admit(batch):
                        return
                    if batch.seqs:
                        batch.step()
                    batch.drop_finished()
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: every running request gets it
                    batch.fail(exc)

    def _admit(self, batch: _Batch) -> bool:
        """Prefill waiting sequences while slots are free (waiting for one when idle); False once closed."""
        block = not batch.seqs
        while len(batch.seqs) < self.slots:
            try:
                seq = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if seq is None:
                batch.fail(RuntimeError("the engine was closed"))
                return False
            if not seq.cancelled:
                try:
                    self._prefill(seq, batch)
                except Exception as exc:  # noqa: BLE001 - e.g. a prompt too long for memory: its request fails
                    seq.fail(exc)
        return True

    def _prefill(self, seq: _Sequence, batch: _Batch) -> None:
        cache = _cache_of([])
        logits = self.forward(torch.tensor([seq.prompt], device=self.device), cache)
        seq.cached = len(seq.prompt)
        advance([seq], logits)
        if not seq.done:
            batch.add(seq, cache)

    def close(self) -> None:
        if self._thread:
            self._inbox.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        while not self._inbox.empty():  # sequences queued after the loop stopped
            if (seq := self._inbox.get()) is not None:
                seq.fail(RuntimeError("the engine was closed"))
        self.model = None


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` padded with zeros at the front of ``dim`` to ``width``."""
    missing = width - t.shape[dim]
    if not missing:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)


class _Batch:
    """The running sequences and their KV cache, rows left-padded to one length with the padding masked out."""

    def __init__(self, engine: TransformersEngine):
        self.engine = engine
        self.seqs: list[_Sequence] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # (rows, cached width): 1 where the row has a real token

    def add(self, seq: _Sequence, cache) -> None:
        mask = torch.ones(1, seq.cached, dtype=torch.long, device=self.engine.device)
        if self.seqs:  # built aside first: a failure (out of memory) leaves the batch as it was
            width = max(self.mask.shape[1], seq.cached)

            def stack(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
                return torch.cat([_left_pad(ours, width, 2), _left_pad(theirs, width, 2)])

            cache = _cache_of([(stack(a.keys, b.keys), stack(a.values, b.values))
                               for a, b in zip(self.cache.layers, cache.layers)])
            mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.cache, self.mask = cache, mask
        self.seqs.append(seq)

    def step(self) -> None:
        device = self.engine.device
        ids = torch.tensor([[s.last] for s in self.seqs], device=device)
        positions = torch.tensor([[s.cached] for s in self.seqs], device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.seqs), 1)], 1)
        logits = self.engine.forward(ids, self.cache, attention_mask=self.mask, position_ids=positions)
        for s in self.seqs:
            s.cached += 1
        advance(self.seqs, logits)

    def drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self.seqs) if not (s.done or s.cancelled)]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        rows = torch.tensor(keep, device=self.engine.device)
        mask = self.mask[rows]
        start = int(mask.any(0).nonzero()[0])  # columns that only the leavers used go too
        self.mask = mask[:, start:]
        self.cache = _cache_of([(layer.keys[rows, :, start:], layer.values[rows, :, start:])
                                for layer in self.cache.layers])

    def fail(self, exc: BaseException) -> None:
        """Every running request gets ``exc``; the batch starts over empty."""
        for seq in self.seqs:
            seq.fail(exc)
        self.seqs, self.cache, self.mask = [], None, None


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A KV cache holding these (keys, values) per layer; empty, it fills as the model runs."""
    from transformers import DynamicCache

    return DynamicCache(layers)


def advance(seqs: list[_Sequence], logits: torch.Tensor) -> None:
    """Sample each sequence's next token from its row of ``logits`` (one host sync for all) and take it in."""
    picked = []
    for seq, row in zip(seqs, logits):
        try:
            picked.append((seq, seq.sampler.pick(row)))
        except Exception as exc:  # noqa: BLE001 - a request's own sampling error fails that request only
            seq.fail(exc)
    if picked:
        tokens = torch.stack([token for _, token in picked]).tolist()
        for (seq, _), token in zip(picked, tokens):
            seq.accept(token)


class _Sampler:
    """One request's logits processing and sampling, with its own random generator (same seed, same output)."""

    def __init__(self, engine: TransformersEngine, prompt: list[int], p: SamplingParams):
        self.p = p
        device, vocab = engine.device, engine.info.vocab_size
        self.generator = torch.Generator(device=device)
        if p.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(p.seed)
        self.generated: list[int] = []
        self.raw: torch.Tensor | None = None  # log-softmax of the last unprocessed logits, for logprobs
        self.counts = torch.zeros(vocab, device=device) if p.presence_penalty or p.frequency_penalty else None
        self.seen = None
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt, device=device)] = True
        self.bias = None
        if p.logit_bias:
            self.bias = (torch.tensor(list(p.logit_bias), device=device),
                         torch.tensor(list(p.logit_bias.values()), dtype=torch.float32, device=device))
        self.choices = None
        if p.constraint and p.constraint.kind == "choice":
            self.choices = [engine.encode(c, special=False) for c in p.constraint.value]
        self.eos = torch.tensor(sorted(engine.eos), dtype=torch.long, device=device)

    def choice_state(self) -> tuple[set[int], bool]:
        """Tokens that continue an allowed string, and whether the output already is one."""
        n = len(self.generated)
        live = [c for c in self.choices if c[:n] == self.generated]
        return {c[n] for c in live if len(c) > n}, any(len(c) == n for c in live)

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.p
        self.raw = torch.log_softmax(logits, -1) if p.logprobs is not None else None
        logits = self._process(logits.clone())
        if p.temperature < GREEDY_BELOW:
            return logits.argmax()
        logits = logits / p.temperature
        if 0 < p.top_k < logits.numel():
            logits = logits.masked_fill(logits < torch.topk(logits, p.top_k).values[-1], float("-inf"))
        probs = torch.softmax(logits, -1)
        if p.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            cut = ordered.cumsum(0) - ordered > p.top_p  # keep the smallest head whose mass reaches top_p
            probs = probs.scatter(0, order, ordered.masked_fill(cut, 0.0))
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < min(p.min_p, 1.0) * probs.max(), 0.0)
        return torch.multinomial(probs, 1, generator=self.generator)[0]

    def _process(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.bias is not None:
            logits.index_add_(0, *self.bias)
        if self.seen is not None:  # HF semantics: every token of prompt and output, scaled towards "less likely"
            scores = logits[self.seen]
            logits[self.seen] = torch.where(scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty)
        if self.counts is not None:  # OpenAI semantics: output tokens only, by count and by presence
            logits -= self.counts * p.frequency_penalty + (self.counts > 0) * p.presence_penalty
        if self.choices is not None:
            allowed, complete = self.choice_state()
            ids = list(allowed) + (self.eos.tolist() if complete else [])
            mask = torch.full_like(logits, float("-inf"))
            mask[torch.tensor(ids, dtype=torch.long, device=logits.device)] = 0.0
            logits += mask
        elif p.ignore_eos and self.eos.numel():
            logits[self.eos] = float("-inf")
        return logits

    def observe(self, token: int) -> None:
        self.generated.append(token)
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True


class _Sequence:
    """One request in the decode loop: its sampler and text, and the events its ``generate`` call waits on."""

    def __init__(self, engine: TransformersEngine, prompt: list[int], params: SamplingParams, limit: int):
        self.engine = engine
        self.prompt = prompt
        self.params = params
        self.limit = limit
        self.sampler = _Sampler(engine, prompt, params)
        # No prompt tokens start the detokenizer's window: the answer decodes as on its own, as transformers'
        # generate() and decode() give it, and a guided choice comes out as the choice's own tokens spell it.
        self.stream = TextStream(engine.tokenizer, [], params.stop, engine._tokenizer_lock)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False  # set by the caller's thread
        self.done = False
        self.cached = 0  # tokens in the KV cache
        self.last = -1  # the latest token, not yet in the cache
        self.count = 0
        self.pending = 0  # tokens sampled but not yet handed out (their text is incomplete or held back)
        self.logprobs: list[TokenLogprob] = []

    def accept(self, token: int) -> None:
        self.count += 1
        self.last = token
        raw = self.sampler.raw
        self.sampler.observe(token)
        if token in self.engine.eos and (not self.params.ignore_eos or self.sampler.choices is not None):
            return self._finish("stop", self.stream.add([], final=True)[0])  # the EOS token itself has no text
        self.pending += 1
        if raw is not None:
            self.logprobs.append(self._logprob(token, raw))
        text, stopped = self.stream.add([token])
        if stopped:
            return self._finish("stop", text)
        chosen = self.sampler.choices is not None and self.sampler.choice_state() == (set(), True)
        if chosen or self.count >= self.limit:
            rest, stopped = self.stream.add([], final=True)
            return self._finish("stop" if chosen or stopped else "length", text + rest)
        if text:
            self._emit(text)

    def _logprob(self, token: int, raw: torch.Tensor) -> TokenLogprob:
        values, ids = raw.topk(self.params.logprobs)
        top = []
        for value, top_id in zip(values.tolist(), ids.tolist()):
            text, data = self.engine.piece(top_id)
            top.append(TopLogprob(text, value, data))
        text, data = self.engine.piece(token)
        return TokenLogprob(text, float(raw[token]), data, tuple(top))

    def _emit(self, text: str) -> None:
        self.events.put(TextDelta(text, tokens=self.pending, logprobs=tuple(self.logprobs)))
        self.pending, self.logprobs = 0, []

    def _finish(self, reason: str, text: str) -> None:
        if text or self.logprobs:
            self._emit(text)
        self.done = True
        self.events.put(Finished(reason, self.count))

    def fail(self, exc: BaseException) -> None:
        self.done = True
        self.events.put(exc)

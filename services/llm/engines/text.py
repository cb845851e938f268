"""Prompt and answer text for the engines that tokenize with a Hugging Face tokenizer (transformers, trtllm).

One way each: the chat template (ChatML where the tokenizer has none), prompt tokenization that does not double a
BOS the template already wrote, and the answer's tokens to text, incrementally, cut at the first stop string.

The functions and classes take the tokenizer itself; where an engine shares its tokenizer between threads, it
passes the lock it uses around the tokenizer (Rust tokenizers may raise "Already borrowed" when shared).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

# For tokenizers without a chat template of their own (base models): ChatML, the most common format.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DETOKENIZE_CONTEXT = 5  # prompt tokens decoded with the answer, so its first word gets its leading space


def apply_chat_template(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's chat template (else ChatML) applied to OpenAI-style messages, ending with the assistant's
    turn."""
    template = None if tokenizer.chat_template else CHATML_TEMPLATE
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def tokenize_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, special tokens parsed and BOS added as the model expects, but only once where the
    text already starts with it (chat templates that write BOS themselves)."""
    ids = list(tokenizer.encode(text, add_special_tokens=True))
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids


class IncrementalDetokenizer:
    """Text of a growing token sequence, released only once it is final (no half UTF-8 characters).

    Decodes a small window of tokens twice, before and after the new ones, so the cost per token stays
    constant and tokenizers that add spaces depending on context (SentencePiece) decode correctly. With the
    prompt, its last few tokens start the window, so the answer's first word gets the leading space it has after
    the prompt; without (``[]``), the answer decodes as it does on its own (SentencePiece drops that space).
    """

    def __init__(self, tokenizer, prompt: list[int], lock: AbstractContextManager | None = None):
        self.tokenizer = tokenizer
        self.lock = lock if lock is not None else nullcontext()
        self.ids = list(prompt[-DETOKENIZE_CONTEXT:])
        self.prefix = 0  # window start
        self.read = len(self.ids)  # text up to here has been released

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, tokens: list[int]) -> str:
        if not tokens:
            return ""
        self.ids += tokens
        return self._release(final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the answer."""
        return self._release(final=True) if self.read < len(self.ids) else ""

    def _release(self, final: bool) -> str:
        with self.lock:
            before = self._decode(self.ids[self.prefix:self.read])
            text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]


class StopMatcher:
    """Cuts text at the first stop string, holding back any tail that may be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that may go out now, and whether a stop string ended the answer."""
        text = self.held + text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class TextStream:
    """An answer's tokens to the text that may go out: an :class:`IncrementalDetokenizer` feeding a
    :class:`StopMatcher`."""

    def __init__(self, tokenizer, prompt: list[int], stops: list[str], lock: AbstractContextManager | None = None):
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt, lock)
        self.stops = StopMatcher(stops)

    def add(self, tokens: list[int], final: bool = False) -> tuple[str, bool]:
        """The text now safe to hand out, and whether a stop string ended the answer. With ``final`` (the answer
        ended), also what was held back: a trailing partial character, a possible start of a stop string."""
        text, stopped = self.stops.feed(self.detokenizer.add(tokens) + (self.detokenizer.flush() if final else ""))
        if final and not stopped:
            text += self.stops.flush()
        return text, stopped

"""Tokenize texts once, before batching: counts tokens for limits and usage, and applies ``truncate``."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class InputTooLongError(ValueError):
    def __init__(self, index: int, length: int, limit: int):
        super().__init__(f"input[{index}] has {length} tokens, more than the model's limit of {limit} tokens; "
                         f"shorten it or set truncate to END or START.")
        self.index, self.length, self.limit = index, length, limit


class TextTokenizer:
    """A fast (Rust) tokenizer with three truncation policies: NONE (refuse), END (keep the start), START."""

    def __init__(self, model_dir: Path, max_tokens: int):
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        base = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        base.no_padding()
        base.no_truncation()
        self.max_tokens = max_tokens
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
        self.input_names = tuple(hf.model_input_names)
        self._full = base
        self._keep_start = Tokenizer.from_str(base.to_str())
        self._keep_start.enable_truncation(max_tokens, direction="right")
        self._keep_end = Tokenizer.from_str(base.to_str())
        self._keep_end.enable_truncation(max_tokens, direction="left")

    def encode(self, texts: list[str], truncate: str = "NONE") -> list[list[int]]:
        ids = [e.ids for e in self._full.encode_batch(texts)]
        too_long = [i for i, x in enumerate(ids) if len(x) > self.max_tokens]
        if not too_long:
            return ids
        if truncate == "NONE":
            raise InputTooLongError(too_long[0], len(ids[too_long[0]]), self.max_tokens)
        cutter = self._keep_start if truncate == "END" else self._keep_end
        for i, enc in zip(too_long, cutter.encode_batch([texts[i] for i in too_long])):
            ids[i] = enc.ids
        return ids

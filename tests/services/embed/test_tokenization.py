from __future__ import annotations

import pytest

from nimrag.services.embed.model import default_model_path
from nimrag.services.embed.tokenization import InputTooLongError, TextTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(default_model_path(), max_tokens=16)


def test_counts_include_special_tokens(tokenizer):
    ids = tokenizer.encode(["hello world"])[0]
    assert len(ids) == 4  # [CLS] hello world [SEP]
    assert ids[0] == 101 and ids[-1] == 102


def test_none_refuses_over_long_input_with_numbers(tokenizer):
    text = " ".join(f"w{i}" for i in range(40))
    with pytest.raises(InputTooLongError) as err:
        tokenizer.encode(["fine", text], truncate="NONE")
    assert err.value.index == 1 and err.value.limit == 16 and err.value.length > 16
    assert "input[1]" in str(err.value) and "16" in str(err.value)


def test_end_keeps_the_start_and_start_keeps_the_end(tokenizer):
    words = [f"word{i}" for i in range(60)]
    text = " ".join(words)
    full = tokenizer._full.encode(text).ids
    keep_start = tokenizer.encode([text], truncate="END")[0]
    keep_end = tokenizer.encode([text], truncate="START")[0]
    assert len(keep_start) == len(keep_end) == 16
    assert keep_start[:15] == full[:15] and keep_start[-1] == 102
    assert keep_end[0] == 101 and keep_end[1:] == full[-15:]


def test_short_inputs_untouched_by_truncation(tokenizer):
    assert tokenizer.encode(["a b"], truncate="END") == tokenizer.encode(["a b"], truncate="NONE")

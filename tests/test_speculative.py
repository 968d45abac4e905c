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
from llavakit.runtime.speculative import HOLE, TargetKV, rejection_step


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


def test_reduced_head_draft_maps_its_logits_back_to_the_targets_ids(tiny_export, tiny_llava, plain, tmp_path) -> None:
    """A draft exported with a head of N frequent ids (export/draft.py, head_size): the target's own LM with a
    head holding exactly the ids of the reference answer accepts everything; with half of them left out it
    accepts less, and greedy output still equals plain greedy; sampling keeps running."""
    reference = plain.generate("tell me a story", max_new_tokens=24, ignore_eos=True).token_ids
    said = list(dict.fromkeys(reference))  # ids in order of first use, no repeats
    (tmp_path / "all.json").write_text(json.dumps({"head_ids": said + [0, 1, 2]}))
    full = export_draft_lm(tiny_llava, tmp_path / "full", head_size=len(said), head_file=tmp_path / "all.json")
    marker = json.loads((full / "llavakit_draft.json").read_text())
    assert marker["head_ids"] == said
    spec = Pipeline(tiny_export, precise=True, draft=full, num_draft_tokens=4)
    assert spec.speculative.draft.sync([5, 6, 7]).shape == (len(said),)  # (N,): logits of the head ids only
    result = spec.generate("tell me a story", max_new_tokens=24, ignore_eos=True)
    assert result.token_ids == reference and result.speculative.acceptance_rate == 1.0
    half = said[: len(said) // 2]
    (tmp_path / "half.json").write_text(json.dumps({"head_ids": half}))
    cut = export_draft_lm(tiny_llava, tmp_path / "half", head_size=1000, head_file=tmp_path / "half.json")
    spec = Pipeline(tiny_export, precise=True, draft=cut, num_draft_tokens=4)
    result = spec.generate("tell me a story", max_new_tokens=24, ignore_eos=True)
    assert result.token_ids == reference
    assert 0 < result.speculative.acceptance_rate < 1.0
    sampled = spec.generate("tell me a story", max_new_tokens=12, ignore_eos=True, do_sample=True, seed=1)
    assert len(sampled.token_ids) == 12
    with pytest.raises(LlavakitError, match="draft_head.json"):
        export_draft_lm(tiny_llava, tmp_path / "none", head_size=8)


def test_random_draft_is_mostly_rejected_and_sampling_runs(spec_other) -> None:
    # Random tiny LMs are near-uniform at temperature 1 (so p ≈ q and most drafts pass); a low
    # temperature makes both peaked, and two unrelated peaked distributions rarely agree.
    spec_other.speculative.k = 3
    settings = {"max_new_tokens": 16, "ignore_eos": True, "do_sample": True, "temperature": 0.05, "seed": 0}
    result = spec_other.generate("tell me a story", **settings)
    assert len(result.token_ids) == 16
    assert result.speculative.acceptance_rate < 0.5
    again = spec_other.generate("tell me a story", **settings)
    assert again.token_ids == result.token_ids  # same seed, same answer


def _state_length(backend) -> int:
    """Physical positions in the target's KV state (read from OpenVINO, not from our bookkeeping)."""
    return int(backend._lm.query_state()[0].state.shape[2])


def test_holes_give_the_logits_of_a_trimmed_state_and_compact_once(spec_other, red_image) -> None:
    backend = spec_other.backend
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prepared = backend.prepare(messages, [red_image])
    backend.reset()
    first = int(np.argmax(backend.prefill(prepared)))
    n = len(backend._state_keys)
    kv = TargetKV(backend)
    rows = kv.verify([first, 5, 6, 7])  # (4, V)
    kv.reject(3)  # all three proposals rejected: they stay in the state, masked
    got = kv.verify([9, 11])  # (2, V) positions n+1, n+2 over valid tokens
    assert _state_length(backend) == n + 6 and kv.valid == n + 3 and backend._state_keys.count(HOLE) == 3
    kv.reject(1)  # 11 rejected too: holes at two places
    got_next = kv.verify([12])  # (1, V)
    kv.close()
    assert backend._state_keys == prepared.keys + [first, 9, 12]
    assert _state_length(backend) == n + 3  # compacted: one physical position per valid key
    compacted = backend.decode_one(13)  # (V,) the engine's own decode on the compacted state
    cases = (([first, 9], got[0]), ([first, 9, 11], got[1]), ([first, 9, 12], got_next[0]),
             ([first, 9, 12, 13], compacted))
    for extra, expected in cases:
        backend.reset()  # reference: the same valid tokens prefilled from nothing, no holes
        scratch = OVPrompt(prepared.token_ids + extra, prepared.images, prepared.digests, prepared.keys + extra)
        np.testing.assert_allclose(expected, backend.prefill(scratch), atol=1e-4)
    backend.reset()
    backend.prefill(prepared)
    np.testing.assert_allclose(rows[0], backend.decode_one(first), atol=1e-4)  # multi-position logits are right


def test_turn_two_with_rejections_equals_plain_and_the_state_is_compacted(plain, spec_other, red_image) -> None:
    spec_other.speculative.k = 3
    ref, spec = plain.chat(), spec_other.chat()
    settings = {"max_new_tokens": 12, "ignore_eos": True}
    one = spec.send("what is it?", [red_image], **settings)
    assert one.token_ids == ref.send("what is it?", [red_image], **settings).token_ids
    stats = one.speculative
    assert stats.drafted > stats.accepted  # there were rejections, so holes
    assert stats.compactions == 1  # 12 tokens, few holes: one copy at the end, none per round
    backend = spec_other.backend
    assert HOLE not in backend._state_keys and _state_length(backend) == len(backend._state_keys)
    two = spec.send("and then?", **settings)
    plain_two = ref.send("and then?", **settings)
    assert two.token_ids == plain_two.token_ids
    assert two.metrics.cached_tokens >= plain_two.metrics.cached_tokens > 0  # the prefix reuse still works
    assert _state_length(backend) == len(backend._state_keys)
    # A generation closed mid-way (a client gone) compacts too.
    generation = spec_other.stream("tell me a story", max_new_tokens=40, ignore_eos=True)
    next(iter(generation))
    generation._pieces.close()
    assert HOLE not in backend._state_keys and _state_length(backend) == len(backend._state_keys)


def test_multi_turn_chat_with_a_draft_reuses_the_cache(plain, spec_other, red_image) -> None:
    ref, spec = plain.chat(), spec_other.chat()
    settings = {"max_new_tokens": 8, "ignore_eos": True}
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


def test_forks_with_a_draft_decode_concurrently_like_plain(plain, spec_other, decode_forks) -> None:
    """Serving slots are Pipeline.fork()s: each fork drafts and verifies on KV states of its own."""
    expected, forks, results = decode_forks(plain, spec_other, 3, 20)
    assert forks[0].speculative.draft._lm is not forks[1].speculative.draft._lm
    assert forks[0].backend._lm.request is not spec_other.backend._lm.request
    assert [r.token_ids for r in results] == expected
    assert all(r.speculative.drafted > 0 for r in results)


def test_serve_with_a_draft(tiny_export, draft_other, plain, red_image) -> None:
    """`llavakit serve --draft`: two clients at once on two slots, greedy text equal to plain greedy,
    and the draft's accepted/rejected proposals in usage.completion_tokens_details."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from test_serve_support import Server, data_url, png_bytes

    # --precise as the reference is: in bf16 compute (the CPU plugin's default on AMX machines) a k+1-token
    # verify pass and one-token steps round differently, and a near-tie can flip.
    server = Server(tiny_export, "--precise", "--draft", str(draft_other), "--draft-k", "3", "--slots", "2")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
                                                 {"type": "text", "text": "What is this?"}]}]
        ask = lambda _: client.chat.completions.create(  # noqa: E731
            model="tiny-ov", messages=messages, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, range(2)))
        reference = plain.generate("What is this?", images=[red_image], max_new_tokens=16, ignore_eos=True)
        for answer in answers:
            assert answer.choices[0].message.content == reference.text
            details = answer.usage.completion_tokens_details
            assert details.accepted_prediction_tokens + details.rejected_prediction_tokens > 0
        assert "speculative decoding" in " ".join(server.output().split())  # rich wraps the line
    finally:
        server.stop()


def test_default_numerics_verify_without_dynamic_quantization(tiny_export: Path, draft_other: Path,
                                                              red_image) -> None:
    """Without ``precise``, the verifying target still compiles with VERIFY_PROPERTIES (f32 KV cache, no dynamic
    INT8 activations: the settings under which a k+1-row pass equals one-row steps), a user's properties win,
    and greedy output equals plain greedy at the same settings."""
    from llavakit.runtime.speculative import VERIFY_PROPERTIES

    spec = Pipeline(tiny_export, draft=draft_other, num_draft_tokens=3)
    compiled = spec.backend._lm.get_compiled_model()
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
    assert str(compiled.get_property("KV_CACHE_PRECISION")) in ("<Type: 'float32'>", "f32")
    plain = Pipeline(tiny_export, properties=dict(VERIFY_PROPERTIES))
    for question, images in (("Describe a sunny day.", None), ("What is in the image?", [red_image])):
        a = plain.generate(question, images, max_new_tokens=24, ignore_eos=True)
        b = spec.generate(question, images, max_new_tokens=24, ignore_eos=True)
        assert b.token_ids == a.token_ids
    mine = Pipeline(tiny_export, draft=draft_other, properties={"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32})
    assert int(mine.backend._lm.get_compiled_model().get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 32

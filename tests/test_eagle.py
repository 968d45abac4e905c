"""EAGLE feature drafts (runtime/eagle.py, runtime/eagle_decoder.py, export/eagle.py) on the tiny LLaVA.

A random draft accepts little, so these tests check what must hold whatever the draft says: greedy output
equals plain greedy, the exported draft computes what its torch source computes, and — the plumbing —
each proposal at k = 1 is exactly the teacher-forced prediction from the target's true features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llavakit import Pipeline
from llavakit.checkpoints.random_parts import make_random_eagle
from llavakit.errors import LlavakitError
from llavakit.export.eagle import export_eagle_draft, load_eagle_body
from llavakit.runtime.eagle import EagleState


@pytest.fixture(scope="module")
def eagle_src(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_eagle(tiny_llava, tmp_path_factory.mktemp("eagle") / "src", seed=3)


@pytest.fixture(scope="module")
def eagle_draft(tiny_llava: Path, eagle_src: Path) -> Path:
    return export_eagle_draft(eagle_src, tiny_llava, eagle_src.parent / "ov", weights="fp32")


@pytest.fixture(scope="module")
def spec(tiny_export: Path, eagle_draft: Path) -> Pipeline:
    return Pipeline(tiny_export, precise=True, draft=eagle_draft, num_draft_tokens=2)


def torch_draft(src: Path, tiny_llava: Path):
    """The draft as train_eagle.py defines it: fc + body, then the target's head."""
    from transformers import AutoModelForImageTextToText

    body, weight, bias = load_eagle_body(src)
    head = AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.float32).lm_head

    def run(embeds: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (1, T, H) each
        x = torch.cat([embeds, prev], -1) @ weight.T + bias  # (1, T, H)
        feats = body(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long)).last_hidden_state
        return head(feats), feats  # (1, T, V), (1, T, H)

    return run


def test_exported_draft_computes_what_its_torch_source_computes(eagle_src, eagle_draft, tiny_llava, spec) -> None:
    draft = spec.speculative.draft.fork()
    hidden = draft.we.shape[0]
    rng = np.random.default_rng(0)
    embeds, prev = rng.normal(size=(2, 7, hidden)).astype(np.float32)  # (7, H) each
    logits_a, feat_a = draft.run(embeds[:4], prev[:4], np.arange(4))  # two calls: the state carries over
    logits_b, feat_b = draft.run(embeds[4:], prev[4:], np.arange(4, 7))
    with torch.no_grad():
        logits, feats = torch_draft(eagle_src, tiny_llava)(torch.from_numpy(embeds)[None], torch.from_numpy(prev)[None])
    np.testing.assert_allclose(logits_a, logits[0, 3].numpy(), atol=2e-4)
    np.testing.assert_allclose(logits_b, logits[0, 6].numpy(), atol=2e-4)
    np.testing.assert_allclose(feat_b, feats[0, 6].numpy(), atol=2e-4)


def test_greedy_equals_plain_greedy_with_an_image_and_in_turn_two(plain, spec, red_image) -> None:
    reference = plain.generate("what is this?", images=[red_image], max_new_tokens=32, ignore_eos=True).token_ids
    for k in (1, 2, 4):
        spec.speculative.k = k
        result = spec.generate("what is this?", images=[red_image], max_new_tokens=32, ignore_eos=True)
        assert result.token_ids == reference, f"k={k}"
        assert result.speculative.drafted > 0
    spec.speculative.k = 2
    turns = [("what is this?", [red_image]), ("and the colour?", [])]
    a, b = plain.chat(), spec.chat()
    for text, images in turns:
        got = b.send(text, images, max_new_tokens=16, ignore_eos=True)
        assert got.token_ids == a.send(text, images, max_new_tokens=16, ignore_eos=True).token_ids
    assert got.metrics.cached_tokens > 0  # turn two reused the KV of turn one


def test_sampling_with_an_eagle_draft_runs_and_is_seeded(spec, red_image) -> None:
    settings = dict(images=[red_image], max_new_tokens=16, do_sample=True, temperature=0.9, seed=5, ignore_eos=True)
    first = spec.generate("tell me", **settings)
    assert first.token_ids == spec.generate("tell me", **settings).token_ids
    assert first.speculative.rounds > 0


def test_proposals_at_k1_are_the_teacher_forced_predictions(spec, eagle_src, tiny_llava, red_image, monkeypatch) -> None:
    """With k = 1 every proposal is made from the target's true features only, so each must equal the torch
    draft's argmax over the whole sequence (prompt with image rows + answer) fed its true features."""
    seen: list[tuple[int, int]] = []  # (position of t, proposal)
    original = EagleState.propose

    def logged(self, last, position, k, pick):
        out = original(self, last, position, k, pick)
        seen.extend((position, token) for token in out)
        return out

    monkeypatch.setattr(EagleState, "propose", logged)
    spec.backend.reset()
    spec.speculative.k = 1
    try:
        result = spec.generate("what is this?", images=[red_image], max_new_tokens=20, ignore_eos=True)
    finally:
        spec.speculative.k = 2
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                          {"type": "text", "text": "what is this?"}]}], add_generation_prompt=True)
    enc = processor(text=[text], images=[red_image], return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.tensor([result.token_ids])], 1)  # (1, T)
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        feats = model.model(input_ids=ids, pixel_values=enc["pixel_values"]).last_hidden_state  # (1, T, H)
        hook.remove()
        prev = torch.cat([torch.zeros_like(feats[:, :1]), feats[:, :-1]], 1)
        logits, _ = torch_draft(eagle_src, tiny_llava)(captured["embeds"], prev)
    assert len(seen) >= 10
    assert spec.backend.cached_tokens == 0  # the whole prompt was prefilled, so the draft saw all of it
    expected = [int(logits[0, position].argmax()) for position, _ in seen]
    assert [token for _, token in seen] == expected


def test_forks_with_an_eagle_draft_decode_concurrently_like_plain(plain, spec, decode_forks) -> None:
    expected, forks, results = decode_forks(plain, spec, 2, 16)
    assert forks[0].speculative.draft._lm is not forks[1].speculative.draft._lm
    assert [r.token_ids for r in results] == expected


def test_export_errors_are_clear(eagle_src, tiny_llava, tmp_path) -> None:
    from typer.testing import CliRunner

    from llavakit.cli import app

    result = CliRunner().invoke(app, ["export-draft", str(eagle_src), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--target" in result.output
    with pytest.raises(LlavakitError, match="not a trained EAGLE draft"):
        export_eagle_draft(tmp_path, tiny_llava, tmp_path / "y")

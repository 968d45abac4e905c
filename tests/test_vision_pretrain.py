"""Vision-tower pretraining on shapes world: labels from scenes, CLIP-equivalent normalisation, a real short run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llavakit.data.shapes.generate import HELD_OUT, allowed_pairs
from llavakit.data.shapes.scene import COLORS, SHAPES, WORDS, render, sample_scene
from llavakit.train.vision_pretrain import (
    NONE_COLOR,
    NONE_WORD,
    PretrainConfig,
    normalise,
    permute_colors,
    pretrain_vision,
    render_scenes,
    scene_labels,
)


def test_labels_follow_the_scene():
    for i in range(20):
        scene = sample_scene(random.Random(i), 160, allowed_pairs=allowed_pairs("train"), with_word=i % 2 == 0)
        lab = scene_labels(scene, 10)
        for obj in scene.objects:  # the patch holding an object's centre names that object
            ci, cj = int(obj.cy // 16), int(obj.cx // 16)
            assert COLORS[lab.color[ci, cj]] == obj.color and SHAPES[lab.shape[ci, cj]] == obj.shape
        assert (lab.color == NONE_COLOR).sum() > 0  # background exists
        assert lab.word == (WORDS.index(scene.word) if scene.word else NONE_WORD)
        assert lab.text.any() == bool(scene.word)
        assert lab.counts[: len(SHAPES)].sum() == len(scene.objects) == lab.counts[len(SHAPES):].sum()


def test_heldout_scenes_hold_a_heldout_pair_and_training_scenes_never():
    _, train = render_scenes(24, size=32, grid=4)
    _, test = render_scenes(24, size=32, grid=4, heldout=True)
    held = {(COLORS.index(c), SHAPES.index(s)) for c, s in HELD_OUT}

    def pairs(lab):
        return {(int(c), int(s)) for c, s in zip(lab["color"].flatten(), lab["shape"].flatten()) if c != NONE_COLOR}

    assert not pairs(train) & held
    assert pairs(test) & held


def test_normalise_matches_the_clip_processor(parts):
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(parts("vision", "clip"))
    size = proc.crop_size["height"]
    scene = sample_scene(random.Random(3), size, allowed_pairs=allowed_pairs("train"))
    img = render(scene)
    ref = proc(images=img, return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
    ours = normalise(torch.from_numpy(np.array(img))[None], proc.image_mean, proc.image_std)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=0.03)


def test_pretrain_learns_and_saves_a_plain_clip_tower(parts, tmp_path):
    from transformers import AutoConfig, CLIPVisionModel

    cfg = AutoConfig.from_pretrained(parts("vision", "clip"))
    size, grid = cfg.image_size, cfg.image_size // cfg.patch_size
    images, labels = render_scenes(64, size=size, grid=grid)
    summary = pretrain_vision(parts("vision", "clip"), tmp_path / "tower", images, labels,
                              PretrainConfig(steps=40, batch=32, lr=3e-3, warmup=5, log_every=10), device="cpu",
                              eval_set=(images[:32], {k: v[:32] for k, v in labels.items()}),
                              other_evals={"plain": (images[32:], {k: v[32:] for k, v in labels.items()})})
    losses = [row["loss"] for row in summary["curve"]]
    assert losses[-1] < losses[0]
    assert set(summary["accuracy"]) == {"color", "shape", "word", "letters", "counts", "pos"}
    tower = CLIPVisionModel.from_pretrained(tmp_path / "tower")  # heads are not part of the saved model
    assert not any("head" in k for k in tower.state_dict())
    assert (tmp_path / "tower" / "vision_pretrain.json").is_file()
    assert set(summary["accuracy_plain"]) == set(summary["accuracy"])
    heads = load_file(str(tmp_path / "tower_heads.safetensors"))  # kept beside the tower, to re-score it later
    assert "counts.weight" in heads and "letters.weight" in heads


def test_wrong_image_size_is_a_clear_error(parts, tmp_path):
    from llavakit.errors import LlavakitError

    images, labels = render_scenes(4, size=48, grid=3)
    with pytest.raises(LlavakitError, match="do not match the tower"):
        pretrain_vision(parts("vision", "clip"), tmp_path / "t", images, labels, PretrainConfig(steps=1), device="cpu")


def test_permute_colors_swaps_channels_and_marks_those_images():
    images = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    out, ok = permute_colors(images, 0.5, torch.Generator().manual_seed(0))
    assert 0 < ok.sum() < 64
    assert torch.equal(out[ok], images[ok])
    for a, b in zip(out[~ok], images[~ok]):
        assert not torch.equal(a, b) or len(set(b.flatten().tolist())) == 1
        assert sorted(a.flatten().tolist()) == sorted(b.flatten().tolist())  # same values, channels moved


def test_letter_labels_and_made_up_words(tmp_path):
    """Made-up words: the word head ignores them, the letter head spells them; other fonts render."""
    from llavakit.train.vision_pretrain import END, IGNORE, MAX_LETTERS, letter_labels

    assert letter_labels(None).tolist() == [IGNORE] * MAX_LETTERS
    assert letter_labels("cab").tolist() == [2, 0, 1] + [END] * (MAX_LETTERS - 3)
    font = tmp_path / "builtin.ttf"
    font.write_bytes(builtin_font_bytes())  # a real TrueType file on every machine with Pillow
    images, labels = render_scenes(40, size=32, grid=4, fonts=(str(font),), random_words=1.0)
    has_word = labels["letters"][:, 0] != IGNORE
    assert has_word.any()
    assert (labels["word"][has_word] == IGNORE).sum() > 0  # made-up words are not in the word list
    assert images.shape == (40, 32, 32, 3)
    out = {"letters": torch.zeros(40, MAX_LETTERS, END + 1)}
    from llavakit.train.vision_pretrain import _ce_or_zero

    assert torch.isfinite(_ce_or_zero(out["letters"].flatten(0, 1), labels["letters"].flatten()))
    assert _ce_or_zero(torch.zeros(3, 5), torch.full((3,), IGNORE)).item() == 0.0  # no word at all: 0, not NaN


def builtin_font_bytes() -> bytes:
    """Pillow's built-in scalable font as TrueType bytes (it is embedded in Pillow, not a file on disk)."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    source = font.path  # a BytesIO holding the TrueType data
    source.seek(0)
    return source.read()

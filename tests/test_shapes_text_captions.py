"""Text-only caption samples (llavakit/data/shapes/text_captions.py): every pair named, none rendered."""

from __future__ import annotations

import json
import re

from llavakit.data.shapes import HELD_OUT, ShapesConfig, generate_shapes
from llavakit.data.shapes.text_captions import text_caption_samples
from llavakit.data.shapes import COLORS, SHAPES
from llavakit.eval.accuracy import caption_pairs


def test_text_captions_bind_colour_to_shape_and_cover_held_out_pairs() -> None:
    samples = text_caption_samples(300, seed=0)
    assert samples == text_caption_samples(300, seed=0)  # same seed, same samples
    named: set[tuple[str, str]] = set()
    for s in samples:
        assert "image" not in s and "<image>" not in s["conversations"][0]["value"]
        prompt, caption = (c["value"] for c in s["conversations"])
        pairs = caption_pairs(caption)
        assert pairs, caption
        # the prompt never writes the caption's "<colour> <shape>" bigram: the model must bind them itself
        assert not re.search(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", prompt.lower()), prompt
        for colour, shape in pairs:
            assert colour in prompt and shape in prompt
        named |= pairs
    assert set(HELD_OUT) <= named  # the held-out pairs occur in text (and only in text)


def test_generate_writes_text_captions_only_when_asked(tmp_path) -> None:
    cfg = ShapesConfig(train=4, val=1, test=1, text_captions=7)
    summary = generate_shapes(tmp_path / "a", cfg)
    rows = json.loads((tmp_path / "a" / "text_captions.json").read_text())
    assert len(rows) == 7 and summary["text_captions"] == 7
    generate_shapes(tmp_path / "b", ShapesConfig(train=4, val=1, test=1))
    assert not (tmp_path / "b" / "text_captions.json").exists()
    train = json.loads((tmp_path / "a" / "train.json").read_text())
    assert all(not r["heldout"] for r in train)  # the images' split promise is unchanged

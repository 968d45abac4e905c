"""A model's declared image fit (``runtime/image_fit.py``): wide pictures padded with their border colour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit.errors import ModelLoadError
from llavakit.runtime.image_fit import apply_fit, declared_fit, pad_to_square_border
from llavakit.runtime.image_processing import ImageProcessor
from llavakit.runtime.pipeline import Pipeline


def _wide() -> Image.Image:
    """A 96x48 picture: a beige background, a red block at the far left (what a centre crop cuts away)."""
    pixels = np.full((48, 96, 3), (230, 220, 200), dtype=np.uint8)  # (H, W, 3)
    pixels[16:32, 2:14] = (220, 20, 20)
    return Image.fromarray(pixels)


def test_pad_to_square_border_keeps_everything_and_fills_with_the_background() -> None:
    wide = _wide()
    square = pad_to_square_border(wide)
    assert square.size == (96, 96)
    out = np.asarray(square)
    assert tuple(out[0, 0]) == tuple(out[-1, -1]) == (230, 220, 200)  # the band looks like more background
    assert np.array_equal(out[24:72], np.asarray(wide))  # the picture itself, centred, untouched
    tall = pad_to_square_border(wide.rotate(90, expand=True))
    assert tall.size == (96, 96) and tuple(np.asarray(tall)[48, 0]) == (230, 220, 200)
    same = Image.new("RGB", (32, 32), "blue")
    assert pad_to_square_border(same) is same and apply_fit([same], "pad-border")[0] is same
    assert apply_fit([wide], "processor") == [wide]
    clear = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # fully transparent: white, as the processor would see it
    assert tuple(np.asarray(pad_to_square_border(clear))[0, 0]) == (255, 255, 255)
    huge_aspect = pad_to_square_border(Image.new("L", (300, 2), 128))  # a grey strip, mode L
    assert huge_aspect.size == (300, 300) and huge_aspect.mode == "RGB"
    strip = pad_to_square_border(Image.new("RGB", (20000, 10), "white"))  # legal to decode; padded it would be 1.2 GB
    assert strip.size == (4096, 4096)


def test_declared_fit(tmp_path: Path) -> None:
    assert declared_fit(tmp_path) == "processor"  # nothing declared: the processor decides (crop)
    (tmp_path / "llavakit_build.json").write_text(json.dumps({"image_fit": "pad-border"}))
    assert declared_fit(tmp_path) == "pad-border"
    (tmp_path / "llavakit_build.json").write_text(json.dumps({"image_fit": "stretch"}))
    with pytest.raises(ModelLoadError, match="image_fit 'stretch'.*pad-border"):
        declared_fit(tmp_path)


def test_pipeline_applies_the_declared_fit_before_every_backend(tiny_export: Path, tmp_path: Path) -> None:
    """A model declaring pad-border answers a wide picture exactly as an undeclared one answers it pre-padded."""
    declared = tmp_path / "declared"
    shutil.copytree(tiny_export, declared)
    (declared / "llavakit_build.json").write_text(json.dumps({"image_fit": "pad-border"}))
    plain, padded = Pipeline(tiny_export), Pipeline(declared)
    assert (plain.image_fit, padded.image_fit) == ("processor", "pad-border")
    wide = _wide()
    settings = {"max_new_tokens": 4, "ignore_eos": True}
    got = padded.generate("What is it?", [wide], **settings)
    want = plain.generate("What is it?", [pad_to_square_border(wide)], **settings)
    assert got.token_ids == want.token_ids and got.text == want.text
    processor = ImageProcessor.from_pretrained(tiny_export)
    assert not np.array_equal(processor(wide), processor(pad_to_square_border(wide)))  # the fit changes the pixels
    chat = padded.chat()
    assert chat.send("What is it?", [wide], **settings).token_ids == want.token_ids  # chat turns too

"""A model's declared *input fit*: how a picture that is not square becomes square before the image processor.

Why: CLIP's processor (what llava-hf checkpoints and llavakit's default models save) resizes the short edge and
centre-crops, so a 400x300 picture loses 50 px on each side. LLaVA-1.5's original code pads to a square with the
processor's mean colour instead, but a model trained only on square pictures reads such a grey band as
something: on the robustness probe (``benchmarks/robustness_probe.py``, 700 questions drawn by other code, a third
of them on non-square canvases) budget scored 85.7% cropped and 79.4% mean-padded. Padding with the picture's
own border colour (the median of its edge pixels) makes the band look like more background: 87.7% (nano 85.4 ->
86.1), counts 92 -> 97 and captions 86 -> 90, because no object is cut away.

A model opts in through its ``llavakit_build.json`` (``"image_fit": "pad-border"``; nano and budget do). The fit
is applied to the decoded picture in ``Pipeline.stream_messages``, before any backend sees it, so the torch,
OpenVINO and llama.cpp backends get the same pixels; square pictures pass unchanged. Other runtimes reading the
export (OpenVINO GenAI's ``VLMPipeline``, transformers) apply the processor alone, i.e. they crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from llavakit.errors import ModelLoadError
from llavakit.export.declared import build_info
from llavakit.runtime.image_processing import convert_to_rgb

#: "processor": leave the picture to the image processor; "pad-border": pad to a square with its border colour.
FITS = ("processor", "pad-border")
#: Longest side of the padded square. A picture with a longer side is scaled down first: a legal 64-megapixel
#: strip (64000 x 1000) would otherwise become a 12 GB canvas. The processor then shrinks it to a few hundred
#: pixels anyway, so nothing a vision tower could see is lost.
MAX_SIDE = 4096


def declared_fit(model_dir: str | Path) -> str:
    """The fit ``model_dir`` declares (``image_fit`` in its build info), "processor" when it declares none."""
    fit = build_info(model_dir).get("image_fit", "processor")
    if fit not in FITS:
        raise ModelLoadError(f"{model_dir}: image_fit {fit!r} in llavakit_build.json is not one of {list(FITS)}")
    return fit


def pad_to_square_border(image: Image.Image) -> Image.Image:
    """``image`` centred on a square of its long edge filled with the median colour of its edge pixels."""
    if image.width == image.height:
        return image
    image = convert_to_rgb(image)  # transparency over white first, as the processor would (not dropped)
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    rgb = np.asarray(image)  # (H, W, 3) uint8
    edges = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])  # (2W + 2H, 3)
    fill = tuple(int(v) for v in np.median(edges, axis=0))
    side = max(image.width, image.height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def apply_fit(images: Sequence[Image.Image], fit: str) -> list[Image.Image]:
    """The pictures as the model should see them under ``fit`` (a new list; the inputs are not changed)."""
    if fit == "pad-border":
        return [pad_to_square_border(image) for image in images]
    return list(images)

"""Calibration images for INT8 post-training quantization of the vision encoder.

Activation ranges are learned from real inputs, so ``--calibration`` takes a
folder of images or a LLaVA-format JSON dataset (its ``image`` fields, relative
to the JSON file), ``shapes`` for rendered shapes-world scenes, or ``synthetic``.

With nothing given, a model that declares its image domain is calibrated on it:
``llavakit_build.json`` with ``"calibration": "shapes"`` (the default models
``nano`` and ``budget``; ``export/declared.py``). Measured on budget (first 200
test questions, benchmarks/training.md): INT8 vision calibrated on the generic
synthetic scenes lost 3 points, on 32 shapes-world scenes it lost none. Other
models get varied synthetic scenes — gradients, noise, shapes of many colours
and sizes — deterministically, so an export is reproducible offline; real images
from your domain calibrate better.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from llavakit.errors import LlavakitError
from llavakit.export.declared import SHAPES, SYNTHETIC
from llavakit.images import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def calibration_pixel_values(source: str | Path | None, processor, count: int) -> list[np.ndarray]:
    """``count`` preprocessed images, each (1, 3, H, W) float32, from ``source`` or synthesised."""
    if source == SHAPES:
        images = shapes_images(count)
    elif source in (None, "", SYNTHETIC):
        images = synthetic_images(count)
    else:
        images = _images_from(Path(source), count)
    return [processor.image_processor(images=[im], return_tensors="np")["pixel_values"].astype(np.float32)
            for im in images]


CALIBRATION_QUESTIONS = (
    "Describe the image in detail.",
    "What objects are in this picture, and what colour are they?",
    "What is happening here?",
    "Where is the largest shape?",
)


def language_model_calibration(model, processor, pixels: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Prefill inputs for data-aware LM compression (AWQ, scale estimation): chat prompts about the images.

    Each item is what the engine feeds the stateful LM for a prompt: token embeddings with
    the image features merged in at the ``<image>`` positions, a full mask, positions 0..T-1.
    """
    import torch

    from llavakit.export.compress import prefill_inputs

    items = []
    for index, image_pixels in enumerate(pixels):
        question = CALIBRATION_QUESTIONS[index % len(CALIBRATION_QUESTIONS)]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T0)
        with torch.no_grad():
            features = model.model.get_image_features(pixel_values=torch.from_numpy(image_pixels)).pooler_output
            features = torch.cat(list(features), dim=0)  # (P, D)
            embeds = []
            for token in ids[0].tolist():
                if token == model.config.image_token_id:
                    embeds.append(features)
                else:
                    embeds.append(model.get_input_embeddings()(torch.tensor([token])))
            merged = torch.cat(embeds, dim=0)[None]  # (1, T, D)
        items.append(prefill_inputs(merged.numpy()))
    return items


def _images_from(source: Path, count: int) -> list[Image.Image]:
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix == ".json" and source.is_file():
        records = json.loads(source.read_text())
        paths = [source.parent / r["image"] for r in records if isinstance(r, dict) and r.get("image")]
    else:
        raise LlavakitError(f"calibration source {source} is neither a folder of images nor a LLaVA JSON file")
    if not paths:
        raise LlavakitError(f"no images found in calibration source {source} (looked for {sorted(IMAGE_SUFFIXES)})")
    return [load_image(p) for p in paths[:count]]


def synthetic_images(count: int, size: int = 336, seed: int = 0) -> list[Image.Image]:
    """Deterministic, varied RGB scenes: a gradient or noise background with random shapes."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        w, h = (int(v) for v in rng.integers(size // 2, size * 2, size=2))
        if rng.random() < 0.5:
            ramp = np.linspace(0, 1, w)[None, :, None] * rng.random(3) + np.linspace(0, 1, h)[:, None, None] * rng.random(3)
            background = (255 * ramp / max(ramp.max(), 1e-6)).astype(np.uint8)  # (h, w, 3)
        else:
            background = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        images.append(image)
    return images


def shapes_images(count: int, seed: int = 0) -> list[Image.Image]:
    """Shapes-world scenes from their own random stream (disjoint from every train/val/test split).

    Only colour-shape pairs seen in training are drawn, as a user's own images would be.
    """
    import random

    from llavakit.data.shapes.generate import ShapesConfig, allowed_pairs
    from llavakit.data.shapes.scene import render, sample_scene

    size = ShapesConfig().image_size
    pairs = allowed_pairs("train")
    return [render(sample_scene(random.Random(f"shapes/calibration/{seed}/{index}"), size, allowed_pairs=pairs))
            for index in range(count)]

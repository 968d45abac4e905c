"""Text-only caption samples: every colour word with every shape, without an image.

Why: budget v5 read colours and shapes well (colour and shape questions ≥ 93 on held-out pairs) but
captioned held-out pairs at 77.8 against 97.5 for seen ones — it wrote "a red star" under an orange
star. The caption is written colour first, so the language model's prior over "<colour> <shape>"
strings, learnt from captions that never contained a held-out pair, outvotes what the image says.

These samples break that prior in the text alone: the user lists a scene's objects in a scrambled
attribute form ("star (orange)", "shape: star, colour: orange", "a star that is orange") and the
answer is the caption in exactly the shapes-world caption form (``questions.describe``). Colour×shape
pairs are drawn from *all* pairs, held-out ones included, so the model learns to bind the colour to
its shape from context instead of from pair frequency. No image is involved, so no held-out
combination is ever *seen* in training: the test split's promise ("combinations never seen in
training") is about scenes, and still holds.

Result (budget v6, benchmarks/training.md): no gain — caption 82.0 against v5's 84.2, the same swaps.
The prior is in the image→colour mapping, not in the text; kept as an opt-in data tool, off by default.

Written by ``llavakit data shapes --text-captions N`` as ``text_captions.json`` (LLaVA JSON, no
``image`` key) next to the splits; ``scripts/gpu/train_defaults.py`` adds it to budget's instruct mix.
"""

from __future__ import annotations

import random

from llavakit.data.shapes.questions import describe
from llavakit.data.shapes.scene import COLORS, SHAPES, SceneObject, sample_scene

_REQUESTS = (
    "Write a one-sentence caption for this picture.", "Caption the picture in one sentence.",
    "Describe the picture in one sentence.", "Turn this into a short caption.", "Write the caption.",
    "Give a one-sentence description of this image.", "What would a caption for this picture say?",
)


def _attribute_list(rng: random.Random, objects: list[SceneObject]) -> str:
    """The objects, left to right, with colour and shape apart (never the caption's "<colour> <shape>")."""
    form = rng.randrange(3)
    if form == 0:
        return ", ".join(f"{o.shape} ({o.color})" for o in objects)
    if form == 1:
        return "; ".join(f"shape: {o.shape}, colour: {o.color}" for o in objects)
    return ", then ".join(f"a {o.shape} that is {o.color}" for o in objects)


def text_caption_sample(index: int, seed: int = 0, image_size: int = 160) -> dict:
    """Sample ``index``: a user turn listing a scene's objects, the assistant's caption of it (LLaVA JSON)."""
    rng = random.Random(f"shapes/{seed}/text-caption/{index}")
    pairs = [(c, s) for c in COLORS for s in SHAPES]  # all pairs: nothing is rendered
    scene = sample_scene(rng, image_size, allowed_pairs=pairs, must_include=rng.choice(pairs))
    objects = sorted(scene.objects, key=lambda o: o.cx)
    word = f' The word "{scene.word}" is written on it.' if scene.word else ""
    prompt = (f"A picture shows these shapes from left to right: {_attribute_list(rng, objects)}.{word} "
              f"{rng.choice(_REQUESTS)}")
    return {"id": f"text-caption-{index:06d}", "family": "text_caption",
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": describe(scene, rng)}]}


def text_caption_samples(count: int, seed: int = 0, image_size: int = 160) -> list[dict]:
    """``count`` text-only caption samples; the same seed gives the same samples."""
    return [text_caption_sample(i, seed, image_size) for i in range(count)]

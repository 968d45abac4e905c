"""What exporting a LLaVA-NeXT adds to the LLaVA export: tile batches and ``image_newline``.

Design (measured in ``benchmarks/llava-next.md``): the vision IR stays the
per-tile one — ``pixel_values (N_tiles, 3, S, S)`` → ``(N_tiles, P, D)``, all of
an image's tiles run as one batch — and the packing (base tile, unpadded tile
grid, ``image_newline`` per row) happens in the engine (``runtime/anyres.py``).
Reasons: OpenVINO GenAI's ``VLMPipeline`` expects exactly that split (it packs
in C++ and reads the newline vector from ``config.json``'s ``image_newline``),
so one exported directory serves both engines; and the packing depends on the
image's original size and grid (data-dependent slicing), which in the graph
would need extra dynamic-shape inputs for a few microseconds of copying.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llavakit.errors import LlavakitError


def is_llava_next(model) -> bool:
    """Whether a loaded transformers model is a LLaVA-NeXT."""
    return getattr(model.config, "model_type", None) == "llava_next"


def tile_batches(pixels: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """Calibration items ``(1, N_tiles, 3, S, S)`` from the LLaVA-NeXT processor → single tiles ``(1, 3, S, S)``.

    Round-robin over images (every image's base tile, then every image's first
    grid tile, ...), so that the first ``calibration_size`` items — all that the
    quantizer takes — cover as many images as possible, base views and crops alike.
    """
    if pixels is None:
        return None
    per_image = [p.reshape(-1, *p.shape[-3:]) for p in pixels]  # each (N_tiles, 3, S, S)
    most = max((len(t) for t in per_image), default=0)
    return [tiles[i : i + 1] for i in range(most) for tiles in per_image if i < len(tiles)]


def refuse_data_aware(options) -> None:
    """AWQ / scale estimation calibrate on merged prompts, which LLaVA-NeXT's packing is not wired into yet."""
    if options.data_aware:
        raise LlavakitError("--awq and --scale-estimation are not supported for LLaVA-NeXT exports yet; "
                            "use plain int4/int8 weight compression")


def write_image_newline(model, out: Path, config_name: str = "config.json") -> None:
    """Store the ``image_newline`` vector in ``config.json`` where OpenVINO GenAI (and our engine) read it."""
    path = out / config_name
    config = json.loads(path.read_text())
    config["image_newline"] = model.model.image_newline.detach().float().cpu().tolist()  # (D,)
    path.write_text(json.dumps(config, indent=2) + "\n")

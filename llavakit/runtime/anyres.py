"""LLaVA-NeXT "AnyRes" in NumPy + PIL: tiles in, packed feature layout out, no torch.

Why here and not in transformers: the OpenVINO engine may not import torch or
transformers, yet its pixels and its image-token counts must be *exactly* those
of transformers 5.23's ``LlavaNextImageProcessor`` (PIL backend) and
``LlavaNextProcessor``, because the engine is checked token for token against
them. So this module reproduces their arithmetic step by step:

Pixels (one image → ``(1 + rows*cols, 3, S, S)``):
1. pick the best grid pinpoint ``(H, W)``: the largest *effective* resolution
   (the image scaled to fit, capped at its own pixel count; truncated ints),
   ties broken by the least wasted area (first wins on a full tie);
2. resize the uint8 image aspect-preserving into it with PIL (the fitting edge
   exactly, the other ``ceil``-ed and capped);
3. pad it to ``(H, W)`` with zeros, centred (the odd pixel goes bottom/right);
4. cut it into ``S x S`` tiles row by row, and put the whole image resized to
   ``S x S`` (aspect ignored) first;
5. every tile then goes through the tower's CLIP steps (shortest-edge resize,
   centre crop, rescale in float64, normalize in float32), which
   :class:`~llavakit.runtime.image_processing.ImageProcessor` already matches.

Token count and packing (per image, ``p = S // patch``):
the base tile gives ``p*p`` features; the tiles form a ``rows*p x cols*p``
feature grid from which the rows (or columns) that only saw padding are cut —
``round(side * scale, 7)`` then an even split of what is left over, as
transformers' ``unpad_image`` — and one ``image_newline`` embedding ends every
remaining row. :func:`pack_features` lays the features out in that order.

Known divergence, on purpose: OpenVINO GenAI 2026.4's llava_next computes the
unpadded side in float32 and truncates instead of ``round(..., 7)``; where that
product lands just under an integer (float32: 8 of the 32-px-tile sizes below
400 px, e.g. 148x37; 336-px tiles: e.g. 592x37, 304x95, 703x296) GenAI cuts one
more padding row (or column) on each side than transformers — seen: 148x37
gives GenAI 42 image positions, transformers 68. We follow transformers (the
reference the model was trained with); GenAI comparisons avoid such sizes.

The "fast" (torchvision) LLaVA-NeXT processor resizes with torch kernels and is
not bit-identical to PIL; llavakit installs no torchvision, so transformers
falls back to the PIL backend reproduced here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from llavakit.errors import ImageError, ModelLoadError
from llavakit.runtime.image_processing import ImageProcessor

#: LLaVA-1.6's published grid for a 336-px tower, (height, width); every entry is a multiple of 336.
PUBLISHED_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
PUBLISHED_TILE = 336
LLAVA_NEXT_PROCESSORS = ("LlavaNextImageProcessor", "LlavaNextImageProcessorPil", "LlavaNextImageProcessorFast")


def scaled_pinpoints(tile: int) -> list[list[int]]:
    """The published pinpoints for a tower of ``tile`` pixels: each (k*336, m*336) becomes (k*tile, m*tile)."""
    return [[h // PUBLISHED_TILE * tile, w // PUBLISHED_TILE * tile] for h, w in PUBLISHED_PINPOINTS]


def select_best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The pinpoint ``(H, W)`` that keeps most of the image's pixels, then wastes the least area."""
    best, best_effective, best_waste = None, 0, math.inf
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_w * cand_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (int(cand_h), int(cand_w)), effective, waste
    if best is None:
        raise ImageError(f"no grid pinpoint fits an image of {width}x{height} (pinpoints {list(pinpoints)})")
    return best


def fit_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Aspect-preserving size inside ``(target_h, target_w)``: one side exact, the other ceil-ed and capped."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def unpadded_grid(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the feature grid ``grid_h x grid_w`` that saw the image, not padding."""
    if width / height > grid_w / grid_h:  # wider than the grid: padding above and below
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = int(round(width * (grid_h / height), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad


@dataclass(frozen=True)
class AnyResProcessor:
    """LLaVA-NeXT preprocessing and token arithmetic; build it with :meth:`from_config`."""

    tile: ImageProcessor  # the per-tile CLIP steps
    pinpoints: tuple[tuple[int, int], ...]
    tile_size: int  # S: crop height, the side of every tile
    base_hw: tuple[int, int]  # what the whole image is resized to before its own tile steps
    patch_size: int  # the tower's patch size (features per tile side = S // patch_size)
    extra_tokens: int = 0  # CLS kept (strategy "full" on CLIP): +1 feature per tile

    @classmethod
    def from_config(cls, cfg: dict[str, Any], patch_size: int, extra_tokens: int = 0) -> AnyResProcessor:
        """From a saved ``LlavaNextImageProcessor`` config plus the tower's patch size.

        Its defaults are CLIP's (same class attributes in transformers), so the
        per-tile steps reuse the CLIP reading of the config.
        """
        name = cfg.get("image_processor_type") or ""
        if name not in LLAVA_NEXT_PROCESSORS:
            raise ModelLoadError(f"image processor {name!r} is not a LLaVA-NeXT one ({', '.join(LLAVA_NEXT_PROCESSORS)})")
        tile = ImageProcessor.from_config({**cfg, "image_processor_type": "CLIPImageProcessor"})
        pinpoints = cfg.get("image_grid_pinpoints") or PUBLISHED_PINPOINTS
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 and min(p) > 0 for p in pinpoints):
            raise ModelLoadError(f"image_grid_pinpoints {pinpoints!r} must be a list of [height, width] pairs")
        if tile.crop_hw is not None:
            side = tile.crop_hw[0]
        elif tile.resize_hw is not None:
            side = tile.resize_hw[0]
        else:
            side = int(tile.shortest_edge or 0)
        base = tile.resize_hw if tile.resize_hw is not None else (tile.shortest_edge, tile.shortest_edge)
        return cls(tile, tuple((int(h), int(w)) for h, w in pinpoints), side, (int(base[0]), int(base[1])),
                   int(patch_size), int(extra_tokens))

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Tiles per column and per row for an image of ``height x width``."""
        best_h, best_w = select_best_resolution(height, width, self.pinpoints)
        return best_h // self.tile_size, best_w // self.tile_size

    def num_image_tokens(self, height: int, width: int, drop_cls: bool = True) -> int:
        """Positions one image takes in the prompt, as ``LlavaNextProcessor`` counts them."""
        side = self.tile_size // self.patch_size
        rows, cols = self.grid(height, width)
        top, bottom, left, right = unpadded_grid(height, width, rows * side, cols * side)
        unpadded = (bottom - top) * (right - left) + (bottom - top)  # features + one newline per row
        base = side * side + self.extra_tokens
        return unpadded + base - (1 if drop_cls and self.extra_tokens else 0)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image → float32 ``(1 + rows*cols, 3, S, S)``: the resized whole image, then the tiles."""
        image = self.tile._to_rgb(image)
        best_h, best_w = select_best_resolution(image.height, image.width, self.pinpoints)
        new_h, new_w = fit_size(image.height, image.width, best_h, best_w)
        fitted = np.asarray(image.resize((new_w, new_h), resample=self.tile.resample)).transpose(2, 0, 1)
        top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
        canvas = np.zeros((3, best_h, best_w), dtype=np.uint8)  # (3, H, W)
        canvas[:, top : top + new_h, left : left + new_w] = fitted
        size = self.tile_size
        tiles = [canvas[:, i : i + size, j : j + size] for i in range(0, best_h, size) for j in range(0, best_w, size)]
        base = image.resize((self.base_hw[1], self.base_hw[0]), resample=self.tile.resample)
        pieces = [base] + [Image.fromarray(np.ascontiguousarray(t.transpose(1, 2, 0))) for t in tiles]
        return np.stack([self.tile.preprocess(p) for p in pieces])  # (N, 3, S, S)


def pack_features(features: np.ndarray, height: int, width: int, grid: tuple[int, int],
                  newline: np.ndarray) -> np.ndarray:
    """Tile features ``(1 + rows*cols, p*p, D)`` → the LM's positions for the image ``(T, D)``.

    Base tile first; then the tiles' features stitched into one ``rows*p x cols*p``
    grid, the padding-only rows/columns removed, ``newline`` appended to each row.
    """
    rows, cols = grid
    count, positions, dim = features.shape
    side = math.isqrt(positions)
    if count != 1 + rows * cols or side * side != positions:
        raise ImageError(f"vision features {features.shape} do not match a {rows}x{cols} grid of square tiles")
    base = features[0]  # (p*p, D)
    tiles = features[1:].reshape(rows, cols, side, side, dim)  # (rows, cols, p, p, D)
    stitched = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * side, cols * side, dim)  # (rows*p, cols*p, D)
    top, bottom, left, right = unpadded_grid(height, width, rows * side, cols * side)
    kept = stitched[top:bottom, left:right]  # (h', w', D)
    ends = np.broadcast_to(newline.astype(features.dtype), (kept.shape[0], 1, dim))  # (h', 1, D)
    with_newlines = np.concatenate([kept, ends], axis=1).reshape(-1, dim)  # (h' * (w'+1), D)
    return np.concatenate([base, with_newlines], axis=0)  # (p*p + h'*(w'+1), D)

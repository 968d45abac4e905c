"""LLaVA-NeXT AnyRes in NumPy (runtime/anyres.py) against transformers' own processor, pixel for pixel.

The reference is transformers' ``LlavaNextImageProcessorPil`` (what
``LlavaNextImageProcessor`` resolves to without torchvision) and
``LlavaNextProcessor``'s image-token expansion, on a tiny model built by
llavakit (32-px tiles, 8-px patches: 4x4 features per tile).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from llavakit.checkpoints.build import build_llava
from llavakit.runtime.anyres import (
    AnyResProcessor,
    pack_features,
    scaled_pinpoints,
    select_best_resolution,
    unpadded_grid,
)
from llavakit.runtime.image_processing import load_processor_config

# (width, height): 1x1, extreme aspect ratios, exact pinpoints (64x32, 32x96, ...), odd sizes,
# and sizes whose unpad product lands a hair under an integer (only round(x, 7) gets them right).
SIZES = [(1, 1), (5, 100), (100, 5), (3, 60), (60, 3), (64, 32), (32, 64), (64, 64), (96, 32), (32, 96),
         (40, 30), (33, 65), (97, 31), (7, 3), (49, 49), (188, 47), (49, 98), (294, 49), (320, 200)]
ROUNDING_SIZES = [(49, 49), (188, 47), (49, 98), (294, 49)]  # (width, height)


@pytest.fixture(scope="module")
def next_dir(parts, tmp_path_factory):
    return build_llava(parts("vision", "clip"), parts("lm", "llama"), tmp_path_factory.mktemp("n") / "next",
                       arch="llava-next")


@pytest.fixture(scope="module")
def hf_processor(next_dir):
    return AutoProcessor.from_pretrained(next_dir)


@pytest.fixture(scope="module")
def ours(next_dir):
    return AnyResProcessor.from_config(load_processor_config(next_dir), patch_size=8, extra_tokens=1)


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_build_writes_scaled_published_pinpoints(hf_processor, next_dir):
    assert scaled_pinpoints(336) == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert scaled_pinpoints(32) == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    assert hf_processor.image_processor.image_grid_pinpoints == scaled_pinpoints(32)
    assert type(hf_processor).__name__ == "LlavaNextProcessor"


@pytest.mark.parametrize("width,height", SIZES)
def test_pixels_equal_transformers(width, height, hf_processor, ours):
    image = _random_image(width, height, seed=width * 1000 + height)
    theirs = hf_processor.image_processor(images=[image], return_tensors="np")["pixel_values"][0]  # (N, 3, S, S)
    mine = ours(image)
    assert mine.shape == theirs.shape
    assert mine.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(mine, theirs)


def test_rounding_sizes_really_hit_the_rounding(ours):
    """Guard: each ROUNDING_SIZES entry must be one where truncation and round(., 7) disagree."""
    for width, height in ROUNDING_SIZES:
        rows, cols = ours.grid(height, width)
        grid_h, grid_w = rows * 4, cols * 4
        product = height * (grid_w / width) if width / height > grid_w / grid_h else width * (grid_h / height)
        assert int(product) != int(round(product, 7)), (width, height, product)


@pytest.mark.parametrize("width,height", SIZES)
def test_token_count_equals_processor_expansion(width, height, hf_processor, ours):
    image = _random_image(width, height, seed=1)
    ids = hf_processor(text="<image>", images=[image], return_tensors="np")["input_ids"][0]
    expanded = int((ids == hf_processor.image_token_id).sum())
    assert ours.num_image_tokens(height, width) == expanded


def test_token_count_on_a_large_grid_of_sizes(hf_processor, ours):
    """Many sizes without pixels: transformers' own count for vLLM-style callers (``_get_num_multimodal_tokens``)."""
    sizes = [(h, w) for h in (1, 2, 17, 31, 32, 33, 47, 49, 63, 64, 95, 96, 97, 200, 1000, 4000)
             for w in (1, 3, 20, 32, 49, 64, 65, 96, 98, 188, 640, 5000)]
    theirs = hf_processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    assert [ours.num_image_tokens(h, w) for h, w in sizes] == theirs


def test_published_shape_seed_example():
    """The 336-px published setup: a 672x672 image is 2x2 tiles + base, i.e. the seed's (1, 5, 3, 336, 336)."""
    assert select_best_resolution(672, 672, scaled_pinpoints(336)) == (672, 672)
    assert select_best_resolution(672, 1008, scaled_pinpoints(336)) == (672, 672)  # 1008x672 fits 2x2 best
    assert unpadded_grid(672, 1008, 48, 48) == (8, 40, 0, 48)  # 16 padding-only feature rows are cut


def test_pack_features_layout():
    """Base first, then rows of the stitched grid, each ended by the newline vector."""
    side, dim = 2, 3
    tiles = np.arange(5 * side * side * dim, dtype=np.float32).reshape(5, side * side, dim)  # 2x2 grid + base
    newline = np.full(dim, -1.0, dtype=np.float32)
    packed = pack_features(tiles, 64, 64, (2, 2), newline)  # square image: nothing unpadded away
    assert packed.shape == (side * side + 4 * 5, dim)
    np.testing.assert_array_equal(packed[: side * side], tiles[0])
    first_row = packed[side * side : side * side + 5]
    np.testing.assert_array_equal(first_row[:2], tiles[1][:2])  # tile (0,0), its first feature row
    np.testing.assert_array_equal(first_row[2:4], tiles[2][:2])  # then tile (0,1)
    np.testing.assert_array_equal(first_row[4], newline)

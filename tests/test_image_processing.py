"""llavakit.runtime.image_processing must give exactly transformers' pixel_values, without torch.

Each processor config is written by transformers itself (``save_pretrained`` of an
image processor, or of a whole ``LlavaProcessor``), loaded back both ways, and
the two outputs compared on awkward image sizes. The comparison is bit-exact:
the module repeats transformers' steps in the same number types.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, CLIPImageProcessor, LlavaProcessor, SiglipImageProcessor

from llavakit.checkpoints.random_parts import make_tokenizer
from llavakit.errors import ImageError, ModelLoadError
from llavakit.runtime.image_processing import ImageProcessor, center_crop, load_processor_config

# (width, height): degenerate, extreme aspect ratios both ways, square, odd, landscape, portrait.
SIZES = [(1, 1), (7, 300), (300, 7), (224, 224), (225, 223), (640, 480), (333, 777), (31, 17), (59, 113)]

PROCESSORS = {
    "clip-224-default": lambda: CLIPImageProcessor(),
    "clip-336-llava15": lambda: CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    ),
    # crop larger than the resized short edge (zero padding) and not square
    "clip-30-crop-32x27": lambda: CLIPImageProcessor(
        size={"shortest_edge": 30}, crop_size={"height": 32, "width": 27}
    ),
    "clip-exact-resize-bilinear": lambda: CLIPImageProcessor(
        size={"height": 40, "width": 50}, crop_size={"height": 33, "width": 48}, resample=2
    ),
    "siglip-50x61": lambda: SiglipImageProcessor(size={"height": 50, "width": 61}),
    "siglip-384-bilinear": lambda: SiglipImageProcessor(size={"height": 384, "width": 384}, resample=2),
    "clip-no-rescale-lanczos": lambda: CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_rescale=False, resample=1
    ),
    "clip-no-normalize": lambda: CLIPImageProcessor(
        size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, do_normalize=False
    ),
}


def _random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return _random_images(SIZES)


def _reference(model_dir: Path, images: list[Image.Image]) -> np.ndarray:
    """transformers' pixel_values, one image at a time (sizes differ before the crop)."""
    processor = AutoImageProcessor.from_pretrained(model_dir)
    # With torchvision installed, transformers' default backend resizes with torch kernels, not PIL.
    assert processor.backend == "pil", "torchvision is installed: transformers no longer resizes with PIL"
    return np.concatenate([processor([im], return_tensors="np")["pixel_values"] for im in images])


def _assert_identical(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


@pytest.mark.parametrize("name", PROCESSORS)
def test_matches_transformers_image_processor(name: str, images: list[Image.Image], tmp_path: Path) -> None:
    PROCESSORS[name]().save_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    _assert_identical(np.concatenate([ours([im]) for im in images]), _reference(tmp_path, images))


def test_batch_of_same_size_is_stacked(images: list[Image.Image], tmp_path: Path) -> None:
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)(images)  # (N, 3, 32, 32)
    ref = AutoImageProcessor.from_pretrained(tmp_path)(images, return_tensors="np")["pixel_values"]
    _assert_identical(ours, ref)


def test_llava_processor_layout(images: list[Image.Image], tmp_path: Path) -> None:
    """transformers 5 saves a LlavaProcessor's image processor inside processor_config.json."""
    tokenizer = make_tokenizer("llama")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert load_processor_config(tmp_path) == saved["image_processor"]

    processor = AutoProcessor.from_pretrained(tmp_path)
    subset = images[3:7]
    ref = processor(text=["<image> hi"] * len(subset), images=subset, return_tensors="np")["pixel_values"]
    _assert_identical(ImageProcessor.from_pretrained(tmp_path)(subset), ref)


def test_config_priority_and_legacy_layout(tmp_path: Path) -> None:
    """Nested processor_config.json wins over preprocessor_config.json, as in AutoImageProcessor."""
    CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 20, "width": 20}).save_pretrained(tmp_path)
    legacy = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert load_processor_config(tmp_path) == legacy  # only the top-level file

    (tmp_path / "processor_config.json").write_text(json.dumps({"patch_size": 14}))  # old LlavaProcessor: not nested
    assert load_processor_config(tmp_path) == legacy

    nested = {**legacy, "crop_size": {"height": 10, "width": 12}}
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": nested, "patch_size": 14}))
    assert load_processor_config(tmp_path) == nested
    assert ImageProcessor.from_pretrained(tmp_path).crop_hw == (10, 12)
    assert AutoImageProcessor.from_pretrained(tmp_path).crop_size.height == 10


def test_old_style_config_with_int_sizes(images: list[Image.Image], tmp_path: Path) -> None:
    """openai/clip-vit-* configs: feature_extractor_type, int size (= shortest edge) and int crop_size."""
    cfg = {
        "feature_extractor_type": "CLIPFeatureExtractor",
        "size": 40,
        "crop_size": 36,
        "do_resize": True,
        "do_center_crop": True,
        "do_normalize": True,
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    ours = ImageProcessor.from_pretrained(tmp_path)
    assert (ours.shortest_edge, ours.crop_hw) == (40, (36, 36))
    _assert_identical(np.concatenate([ours([im]) for im in images]), _reference(tmp_path, images))


def test_missing_keys_take_transformers_class_defaults(images: list[Image.Image], tmp_path: Path) -> None:
    for kind in ("CLIPImageProcessor", "SiglipImageProcessor"):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": kind}))
        ours = ImageProcessor.from_pretrained(tmp_path)
        subset = images[4:6]
        _assert_identical(np.concatenate([ours([im]) for im in subset]), _reference(tmp_path, subset))


def test_mode_conversion_matches_transformers(tmp_path: Path) -> None:
    """Non-RGB inputs: alpha (and a tRNS colour) composited onto white, like transformers' convert_to_rgb."""
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
    rgb_trns = Image.fromarray(rng.integers(0, 2, (37, 53, 3), dtype=np.uint8) * 255)
    rgb_trns.info["transparency"] = (255, 255, 255)
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = 3
    modes = [rgba, rgba.convert("LA"), rgba.convert("L"), rgba.convert("1"), rgba.convert("CMYK"), palette, rgb_trns]
    CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}).save_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    _assert_identical(ours(modes), _reference(tmp_path, modes))


def test_no_center_crop_keeps_aspect_and_refuses_mixed_batches(tmp_path: Path) -> None:
    CLIPImageProcessor(size={"shortest_edge": 16}, do_center_crop=False).save_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    wide, tall = _random_images([(50, 20), (20, 50)])
    out = ours([wide, wide])
    assert out.shape == (2, 3, 16, 40)  # int(16 * 50 / 20) = 40
    _assert_identical(out[:1], _reference(tmp_path, [wide]))
    with pytest.raises(ImageError, match="differ in size"):
        ours([wide, tall])


def test_resize_output_size_truncates_long_edge() -> None:
    proc = ImageProcessor(shortest_edge=224)
    assert proc.resize_output_size(480, 640) == (224, 298)  # 224 * 640 / 480 = 298.67 -> 298
    assert proc.resize_output_size(300, 7) == (9600, 224)
    assert proc.resize_output_size(1, 1) == (224, 224)


def test_center_crop_offsets() -> None:
    pixels = np.arange(5 * 6, dtype=np.uint8).reshape(1, 5, 6)  # (1, H=5, W=6)
    # odd difference: the extra row/column is dropped at the bottom/right
    np.testing.assert_array_equal(center_crop(pixels, (2, 3)), pixels[:, 1:3, 1:4])
    # larger than the image: zero padding, the extra row/column goes at the top/left
    padded = center_crop(pixels, (8, 7))  # (1, 8, 7)
    np.testing.assert_array_equal(padded[:, 2:7, 1:7], pixels)
    assert padded.sum() == pixels.sum()


def test_bad_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no image processor config"):
        load_processor_config(tmp_path)
    with pytest.raises(ModelLoadError, match="LlavaNextImageProcessor"):
        ImageProcessor.from_config({"image_processor_type": "LlavaNextImageProcessor"})
    with pytest.raises(ModelLoadError, match="longest_edge"):
        ImageProcessor.from_config({"image_processor_type": "CLIPImageProcessor", "size": {"longest_edge": 5}})
    with pytest.raises(ModelLoadError, match="resample"):
        ImageProcessor.from_config({"image_processor_type": "CLIPImageProcessor", "resample": 9})


def test_does_not_import_torch_or_transformers(tmp_path: Path) -> None:
    CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(tmp_path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from PIL import Image\n"
        "from llavakit.runtime.image_processing import ImageProcessor\n"
        f"out = ImageProcessor.from_pretrained(Path({str(tmp_path)!r}))([Image.new('RGB', (9, 5))])\n"
        "assert out.shape == (1, 3, 8, 8), out.shape\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

"""Image preprocessing for LLaVA vision towers with numpy + PIL only.

Why this exists: the OpenVINO engine must start fast, so its import path may not
touch torch or transformers (``import transformers``' processor machinery pulls
in torch: seconds of start-up). Yet the engine's answers are compared
token-for-token with transformers, so its pixels must be *the same* as those of
transformers' image processors. This module re-implements what transformers
5.23's ``CLIPImageProcessor(Pil)`` and ``SiglipImageProcessor(Pil)`` do with the
keys they save, step for step and in the same number types, so the result is
bit-identical to their ``pixel_values``:

1. convert to RGB (transparency composited onto white);
1b. ``LlavaImageProcessor`` with ``do_pad`` only (LLaVA-1.5's and MoE-LLaVA's
   ``image_aspect_ratio: pad``): pad the uint8 image to a square of its long
   edge, centred (offset ``(long - short) // 2``), filled with the colour
   ``int(mean * 255)`` per channel, so the resize and crop that follow keep the
   whole picture instead of cutting its sides off;
2. resize the uint8 image with PIL (``Image.resize``, the configured filter):
   either the shortest edge to ``size["shortest_edge"]`` keeping the aspect ratio
   (long edge *truncated*: ``int(short_target * long / short)``), or exactly to
   ``size["height"] x size["width"]``;
3. center crop to ``crop_size`` (offset ``(in - out) // 2``, rounding down;
   zero-padded where the image is smaller than the crop);
4. rescale: ``float64(pixels) * rescale_factor``, then cast to float32;
5. normalize in float32: ``(x - mean) / std`` per channel.

Note: with torchvision installed, transformers' default ``CLIPImageProcessor``
is the torchvision backend, which resizes with torch kernels and is *not*
bit-identical to PIL; without torchvision (llavakit's install) it falls back to
the PIL backend reproduced here.

Only the image processors of LLaVA-1.5-style checkpoints are supported (CLIP,
SigLIP, and LLaVA's own CLIP-like processor with its pad-to-square); anything else (e.g. LLaVA-NeXT's any-resolution tiling) is refused with
a :class:`~llavakit.errors.ModelLoadError` rather than processed wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llavakit.errors import ImageError, ModelLoadError

PROCESSOR_CONFIG = "processor_config.json"  # transformers >= 5: {"image_processor": {...}, ...}
PREPROCESSOR_CONFIG = "preprocessor_config.json"  # older checkpoints, optimum-intel / OpenVINO GenAI exports

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC

# transformers 5.23's class attributes: what a config key that is missing (or null) means.
_CLIP_DEFAULTS: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "default_to_square": False,
    "resample": BICUBIC,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
}
_SIGLIP_DEFAULTS: dict[str, Any] = {
    **_CLIP_DEFAULTS,
    "size": {"height": 224, "width": 224},
    "resample": BICUBIC,  # BICUBIC in transformers 5 (4.x used BILINEAR); saved configs name it anyway
    "do_center_crop": False,
    "crop_size": None,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
}
_LLAVA_DEFAULTS: dict[str, Any] = {**_CLIP_DEFAULTS, "do_pad": False}  # LlavaImageProcessor: CLIP's + pad
_DEFAULTS_BY_FAMILY = {"CLIP": _CLIP_DEFAULTS, "Siglip": _SIGLIP_DEFAULTS, "Llava": _LLAVA_DEFAULTS}


def load_processor_config(model_dir: Path) -> dict[str, Any]:
    """Return the image processor config saved in ``model_dir``.

    Same priority as transformers 5.23's ``AutoImageProcessor``: the
    ``"image_processor"`` entry of ``processor_config.json`` (how transformers 5
    saves a whole ``LlavaProcessor``), else the top level of
    ``preprocessor_config.json`` (older llava-hf checkpoints, OpenVINO exports).
    Raises :class:`ModelLoadError` if neither holds one.
    """
    model_dir = Path(model_dir)
    nested = model_dir / PROCESSOR_CONFIG
    if nested.is_file():
        processor = _read_json(nested)
        if isinstance(processor.get("image_processor"), dict):
            return processor["image_processor"]
    flat = model_dir / PREPROCESSOR_CONFIG
    if flat.is_file():
        return _read_json(flat)
    raise ModelLoadError(
        f"{model_dir} has no image processor config: expected an 'image_processor' entry in "
        f"{PROCESSOR_CONFIG} or a {PREPROCESSOR_CONFIG}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} should hold a JSON object, not {type(data).__name__}")
    return data


def _family(cfg: dict[str, Any]) -> str:
    """'CLIP', 'Siglip' or 'Llava' from the saved class name (any backend suffix, or the old FeatureExtractor name)."""
    name = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or ""
    for family in _DEFAULTS_BY_FAMILY:
        if name in (f"{family}ImageProcessor", f"{family}ImageProcessorPil", f"{family}ImageProcessorFast",
                    f"{family}FeatureExtractor"):
            return family
    raise ModelLoadError(
        f"unsupported image processor {name or '(none named)'!r}: llavakit's image preprocessing "
        "handles CLIPImageProcessor, SiglipImageProcessor and LlavaImageProcessor"
    )


def _size_dict(value: Any, default_to_square: bool, name: str) -> dict[str, int]:
    """Old-style sizes to a dict, like transformers' ``get_size_dict``: int, [h, w] or a dict."""
    if isinstance(value, dict):
        size = {key: int(v) for key, v in value.items() if v is not None}
    elif isinstance(value, int) and not isinstance(value, bool):
        size = {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        size = {"height": int(value[0]), "width": int(value[1])}
    else:
        raise ModelLoadError(f"image processor {name} {value!r} is not an int, [height, width] or a dict")
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise ModelLoadError(
            f"image processor {name} {value!r} is not supported: expected {{'shortest_edge': N}} "
            "or {'height': H, 'width': W}"
        )
    if any(v <= 0 for v in size.values()):
        raise ModelLoadError(f"image processor {name} {value!r} must be positive")
    return size


def _per_channel(value: Any, name: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3:
        raise ModelLoadError(f"image processor {name} {value!r} needs 1 or 3 values (RGB)")
    return (float(values[0]), float(values[1]), float(values[2]))


@dataclass(frozen=True)
class ImageProcessor:
    """CLIP/SigLIP preprocessing that matches transformers bit for bit; build it with :meth:`from_config`.

    Sizes are ``(height, width)``. ``shortest_edge`` and ``resize_hw`` are
    exclusive: the first keeps the aspect ratio, the second resizes exactly.
    """

    do_convert_rgb: bool = True
    do_pad: bool = False  # pad to a square with the mean colour first (LlavaImageProcessor only)
    do_resize: bool = True
    shortest_edge: int | None = 224
    resize_hw: tuple[int, int] | None = None
    resample: int = BICUBIC
    do_center_crop: bool = True
    crop_hw: tuple[int, int] | None = (224, 224)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ImageProcessor:
        """Build from a saved image processor config (see :func:`load_processor_config`).

        Keys that are missing or null take the defaults of the transformers class
        named by ``image_processor_type``, exactly as transformers does.
        """
        family = _family(cfg)
        defaults = _DEFAULTS_BY_FAMILY[family]

        def get(key: str) -> Any:
            value = cfg.get(key)
            return defaults[key] if value is None else value

        shortest_edge = resize_hw = crop_hw = None
        do_resize, do_center_crop = bool(get("do_resize")), bool(get("do_center_crop"))
        if do_resize:
            size = _size_dict(get("size"), bool(get("default_to_square")), "size")
            shortest_edge = size.get("shortest_edge")
            resize_hw = (size["height"], size["width"]) if "height" in size else None
        if do_center_crop:
            if get("crop_size") is None:
                raise ModelLoadError("image processor has do_center_crop but no crop_size")
            crop = _size_dict(get("crop_size"), True, "crop_size")
            if "height" not in crop:
                raise ModelLoadError(f"image processor crop_size {get('crop_size')!r} needs height and width")
            crop_hw = (crop["height"], crop["width"])
        resample = int(get("resample"))
        if resample not in {int(r) for r in Image.Resampling}:
            raise ModelLoadError(f"image processor resample {resample!r} is not a PIL resampling filter")
        return cls(
            do_convert_rgb=bool(get("do_convert_rgb")),
            do_pad=family == "Llava" and bool(get("do_pad")),
            do_resize=do_resize,
            shortest_edge=shortest_edge,
            resize_hw=resize_hw,
            resample=resample,
            do_center_crop=do_center_crop,
            crop_hw=crop_hw,
            do_rescale=bool(get("do_rescale")),
            rescale_factor=float(get("rescale_factor")),
            do_normalize=bool(get("do_normalize")),
            image_mean=_per_channel(get("image_mean"), "image_mean"),
            image_std=_per_channel(get("image_std"), "image_std"),
        )

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> ImageProcessor:
        """Shorthand for ``from_config(load_processor_config(model_dir))``."""
        return cls.from_config(load_processor_config(model_dir))

    def __call__(self, images: Sequence[Image.Image] | Image.Image) -> np.ndarray:
        """Preprocess ``images`` into one float32 batch ``(N, 3, H, W)``, like transformers' ``pixel_values``.

        Without a center crop, images of different aspect ratios give different
        sizes and cannot be batched: that raises :class:`ImageError`.
        """
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            raise ImageError("no images to preprocess")
        arrays = [self.preprocess(image) for image in images]  # each (3, H, W)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ImageError(f"preprocessed images differ in size ({sorted(shapes)}); they cannot be batched")
        return np.stack(arrays)  # (N, 3, H, W)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image to a float32 ``(3, H, W)`` array."""
        image = self._to_rgb(image)
        if self.do_pad:
            image = self.pad_to_square(image)
        if self.do_resize:
            height, width = self.resize_output_size(image.height, image.width)
            image = image.resize((width, height), resample=self.resample)  # PIL takes (width, height)
        pixels = np.asarray(image).transpose(2, 0, 1)  # uint8 (3, H, W)
        if self.do_center_crop:
            assert self.crop_hw is not None
            pixels = center_crop(pixels, self.crop_hw)  # uint8 (3, crop_h, crop_w)
        if self.do_rescale:
            # In float64 and then cast, as transformers does: float32 math can differ in the last bit.
            out = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            out = pixels.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]  # (3, 1, 1)
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]  # (3, 1, 1)
            out = (out - mean) / std  # float32 throughout
        return np.ascontiguousarray(out)

    def resize_output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` after the resize step for an input of ``height x width``."""
        if self.resize_hw is not None:
            return self.resize_hw
        assert self.shortest_edge is not None
        short, long = (width, height) if width <= height else (height, width)
        # transformers' get_resize_output_image_size: the long edge is truncated, not rounded.
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def pad_to_square(self, image: Image.Image) -> Image.Image:
        """The image centred on a square of its long edge, the rest filled with the mean colour.

        transformers' ``LlavaImageProcessor.pad_to_square`` on the uint8 pixels:
        fill ``int(mean * 255)`` (truncated), image at offset ``(long - short) // 2``.
        """
        if image.width == image.height:
            return image
        side = max(image.width, image.height)
        fill = np.asarray([int(m * 255) for m in self.image_mean], dtype=np.uint8)  # (3,)
        canvas = np.broadcast_to(fill, (side, side, 3)).copy()  # uint8 (S, S, 3)
        top, left = (side - image.height) // 2, (side - image.width) // 2
        canvas[top : top + image.height, left : left + image.width] = np.asarray(image)  # (H, W, 3)
        return Image.fromarray(canvas)

    def _to_rgb(self, image: Image.Image) -> Image.Image:
        """transformers' ``convert_to_rgb``: transparency (alpha band or a tRNS colour) goes over white."""
        if not self.do_convert_rgb:
            if image.mode != "RGB":
                raise ImageError(f"image mode {image.mode!r} is not RGB and the processor has do_convert_rgb off")
            return image
        return convert_to_rgb(image)


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """transformers' ``convert_to_rgb``: transparency (alpha band or a tRNS colour) goes over white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def center_crop(pixels: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """Crop ``(C, H, W)`` around the centre to ``crop_hw``, zero-filling where the image is smaller.

    The top-left offset is ``(in - out) // 2``, rounded down (also when negative,
    i.e. padding), which puts the extra row/column of an odd difference at the
    bottom/right when cropping and at the top/left when padding: transformers'
    ``image_transforms.center_crop``.
    """
    channels, height, width = pixels.shape
    crop_h, crop_w = crop_hw
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width:
        return pixels[:, top : top + crop_h, left : left + crop_w]
    out = np.zeros((channels, crop_h, crop_w), dtype=pixels.dtype)
    # Rows/columns of the input that land inside the crop window.
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + crop_h, height), min(left + crop_w, width)
    out[:, src_top - top : src_bottom - top, src_left - left : src_right - left] = pixels[
        :, src_top:src_bottom, src_left:src_right
    ]
    return out

"""Turn any image reference into one clean, fully decoded RGB PIL image.

Every entry point (CLI, server, each inference backend, training data loaders)
calls :func:`load_image`, so that:

* every backend sees the *same* pixels for the same input: one mode conversion
  (transparency over white, 16-bit and float scaled to 8-bit, CMYK/LAB/... to
  RGB), one EXIF rotation, always mode ``"RGB"``;
* bad input never crashes a server: missing files, non-images, truncated data,
  decompression bombs and oversized files are refused with an
  :class:`~llavakit.errors.ImageError` whose message names the input and the
  limit, never a raw PIL/OSError traceback;
* decoding happens here (``.load()``), so a lazily decoded corrupt file fails
  now, with a clear message, rather than deep inside a model's preprocessor.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps

from llavakit.errors import ImageError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 64 megapixels: far above any vision tower's input
DEFAULT_MAX_BYTES = 50 * 1024 * 1024  # 50 MiB

ImageSource = Image.Image | str | os.PathLike[str] | bytes | bytearray

_WHITE = (255, 255, 255)
# Formats we decode. An allowlist, not every Pillow plugin: e.g. EPS would run Ghostscript
# on untrusted input. Multi-picture JPEG (MPO, phone photos) is opened by the JPEG plugin.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PPM", "TGA")


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Return ``source`` as a new, fully loaded RGB image, or raise :class:`ImageError`.

    ``source`` may be a PIL image, a path (``str`` or ``os.PathLike``) or the raw
    bytes of an encoded file. ``max_bytes`` bounds what we read into memory and
    ``max_pixels`` what we decode, so hostile input cannot exhaust memory.
    Animated images yield their first frame.
    """
    if isinstance(source, Image.Image):
        return _normalize(source, "<PIL image>", max_pixels)
    if isinstance(source, (bytes, bytearray)):
        name = f"<{len(source)} bytes>"
        _check_byte_count(len(source), name, max_bytes)
        return _decode(bytes(source), name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return _decode(_read_file(path, max_bytes), path, max_pixels)
    raise ImageError(
        f"unsupported image source of type {type(source).__name__}: "
        "expected a PIL.Image.Image, a path (str or os.PathLike) or bytes"
    )


def load_images(
    sources: Iterable[ImageSource] | None, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> list[Image.Image]:
    """Load several images; an error message says which one (by position) failed. ``None`` means none
    (``generate(prompt, images=None)`` is how many callers say "no image"), and one image given on its own
    (a path, bytes or a PIL image: ``generate(prompt, "photo.jpg")``) means a list of that one — iterating
    a path would otherwise "load" one file per character."""
    if sources is None:
        return []
    if isinstance(sources, (str, bytes, bytearray, os.PathLike, Image.Image)):
        sources = [sources]
    images = []
    for index, source in enumerate(sources):
        try:
            images.append(load_image(source, max_pixels=max_pixels, max_bytes=max_bytes))
        except ImageError as exc:
            raise ImageError(f"image #{index}: {exc}") from exc
    return images


def _read_file(path: str, max_bytes: int) -> bytes:
    """Read a file after the cheap checks, so a directory or a 10 GB file is never read."""
    if not os.path.exists(path):
        hint = " (URLs are not fetched; download the image first)" if "://" in path else ""
        raise ImageError(f"image file not found: {path}{hint}")
    if os.path.isdir(path):
        raise ImageError(f"image path is a directory, not a file: {path}")
    try:
        _check_byte_count(os.path.getsize(path), path, max_bytes)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # +1: a file that grew (or a device) is still caught
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    _check_byte_count(len(data), path, max_bytes)
    return data


def _check_byte_count(size: int, name: str, max_bytes: int) -> None:
    if size == 0:
        raise ImageError(f"image file is empty (0 bytes): {name}")
    if size > max_bytes:
        raise ImageError(f"image file {name} is {size} bytes, more than the limit of {max_bytes} bytes (max_bytes)")


def _decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open encoded bytes; PIL reads only the header here, pixels are decoded in _normalize."""
    try:
        # PIL's global guard warns above Image.MAX_IMAGE_PIXELS: silence it, max_pixels
        # (checked in _normalize) is the limit. Far above it (2x) PIL raises: refuse too.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data), formats=_available_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"image {name} is too large to open (decompression bomb?): {exc} (max_pixels is {max_pixels})"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            f"cannot identify image file {name}: not an image or an unsupported format "
            f"(supported: {', '.join(_available_formats())})"
        ) from exc
    except Exception as exc:  # PIL plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"cannot read image file {name}: corrupt or truncated ({exc})") from exc
    return _normalize(image, name, max_pixels)


def _available_formats() -> list[str]:
    """FORMATS that this Pillow build can read (AVIF, WEBP depend on how it was built)."""
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]


def _normalize(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Check the size, decode the pixels, apply EXIF rotation and convert to RGB."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {name} has no pixels (size {width}x{height})")
    if width * height > max_pixels:  # checked on the header, before any pixel is decoded
        raise ImageError(
            f"image {name} is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} pixels (max_pixels)"
        )
    try:
        image.load()  # surfaces truncated/corrupt data now; for animations this is frame 0
        image = ImageOps.exif_transpose(image)  # always a new image: the caller's is untouched
        return _to_rgb(image)
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageError(f"cannot decode image {name}: corrupt or truncated ({exc})") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB the way a viewer would display it."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _to_8bit(image)
    if image.mode == "La":  # premultiplied alpha; PIL converts it to nothing but "LA"
        image = image.convert("LA")
    if image.has_transparency_data:
        # Transparent areas become white, not black (black is what convert("RGB") gives):
        # white is the background a user saw the image on.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # a copy even when already RGB; handles 1, L, P, CMYK, YCbCr, LAB, HSV


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale high-depth greyscale to 0..255 (PIL's own convert clips everything above 255 to white).

    16-bit ("I;16*") and 32-bit int ("I", how PIL often holds 16-bit PNG/TIFF data)
    map 0..65535 linearly to 0..255. Float ("F") is taken as 0..1 when no value
    exceeds 1, else as 0..255; NaN becomes 0.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))

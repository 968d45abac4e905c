"""Tests for llavakit.images: every image file is written here, into tmp_path, with PIL."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llavakit.errors import ImageError
from llavakit.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image, load_images

# A warning leaking out of load_image (PIL's DecompressionBombWarning, a deprecation) fails the test.
pytestmark = pytest.mark.filterwarnings("error")

WHITE, BLACK, RED, BLUE = (255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255)


def save(tmp_path: Path, image: Image.Image, name: str, **params) -> Path:
    path = tmp_path / name
    image.save(path, **params)
    return path


def mode_on_disk(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed up)."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_defaults() -> None:
    assert DEFAULT_MAX_PIXELS == 64 * 1024 * 1024
    assert DEFAULT_MAX_BYTES == 50 * 1024 * 1024


# --- refusals -----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=f"image file not found: {path}"):
        load_image(path)


def test_url_is_not_fetched() -> None:
    with pytest.raises(ImageError, match="URLs are not fetched"):
        load_image("https://example.com/cat.png")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory"):
        load_image(str(tmp_path))


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty \\(0 bytes\\)"):
        load_image(path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="cannot identify image file") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "supported: PNG, JPEG" in str(info.value)


def test_format_outside_the_allowlist(tmp_path: Path) -> None:
    # Pillow can read EPS (through Ghostscript); load_image does not accept it from untrusted input.
    path = save(tmp_path, Image.new("RGB", (4, 4), RED), "a.eps")
    with pytest.raises(ImageError, match="cannot identify image file.*supported: PNG, JPEG"):
        load_image(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="cannot identify image file"):
        load_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None  # the PIL error is chained, not swallowed


def test_corrupt_png_chunk(tmp_path: Path) -> None:
    data = bytearray(png_bytes(Image.new("RGB", (8, 8), RED)))
    data[40:60] = b"\x00" * 20  # smash the IDAT chunk
    with pytest.raises(ImageError, match="cannot"):
        load_image(bytes(data))


def test_bomb_header_refused_before_decoding() -> None:
    # 9000 x 9000 (243 MB of RGB) is under PIL's own guard: only our max_pixels check sees it.
    # Only the header is read; nothing is allocated.
    with pytest.raises(ImageError, match="9000x9000 = 81000000 pixels, more than the limit of 67108864"):
        load_image(png_claiming_size(9000, 9000))
    # 10000 x 10000 makes PIL warn (its global limit); the warning does not leak, max_pixels decides.
    with pytest.raises(ImageError, match="10000x10000 = 100000000 pixels.*max_pixels"):
        load_image(png_claiming_size(10_000, 10_000))


def test_huge_bomb_refused_even_with_a_raised_limit() -> None:
    # 30 GB of RGB claimed: PIL's own DecompressionBombError comes out as an ImageError.
    for max_pixels in (DEFAULT_MAX_PIXELS, 10**12):
        with pytest.raises(ImageError, match="too large to open.*decompression bomb") as info:
            load_image(png_claiming_size(100_000, 100_000), max_pixels=max_pixels)
        assert f"max_pixels is {max_pixels}" in str(info.value)


def test_pil_global_limit_is_not_mutated() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        load_image(png_claiming_size(100_000, 100_000))
    assert Image.MAX_IMAGE_PIXELS == before


def test_small_max_pixels(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("RGB", (100, 50), RED), "a.png")
    with pytest.raises(ImageError, match="100x50 = 5000 pixels, more than the limit of 4999"):
        load_image(path, max_pixels=4999)
    assert load_image(path, max_pixels=5000).size == (100, 50)


def test_zero_width() -> None:
    with pytest.raises(ImageError, match="0x5"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError):
        load_image(png_claiming_size(0, 5))


def test_max_bytes(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("RGB", (16, 16), RED), "a.png")
    size = path.stat().st_size
    with pytest.raises(ImageError, match=f"{size} bytes, more than the limit of {size - 1} bytes"):
        load_image(path, max_bytes=size - 1)
    assert load_image(path, max_bytes=size).size == (16, 16)
    with pytest.raises(ImageError, match="max_bytes"):
        load_image(path.read_bytes(), max_bytes=10)


@pytest.mark.parametrize("source", [123, None, 1.5, ["a.png"], {"path": "a.png"}])
def test_wrong_source_type(source: object) -> None:
    with pytest.raises(ImageError, match=f"type {type(source).__name__}"):
        load_image(source)  # type: ignore[arg-type]


# --- mode conversion ----------------------------------------------------------


def rgb_pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    assert image.mode == "RGB"
    return [image.getpixel((x, 0)) for x in range(image.width)]


def test_rgba_transparent_becomes_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    out = load_image(save(tmp_path, image, "a.png"))
    transparent, red, half = rgb_pixels(out)
    assert transparent == WHITE
    assert red == RED
    assert all(abs(c - 127) <= 1 for c in half)  # black at 50% over white is mid grey


def test_la(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (0, 255)])
    assert rgb_pixels(load_image(save(tmp_path, image, "a.png"))) == [WHITE, BLACK]


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putdata([0, 1])
    assert rgb_pixels(load_image(save(tmp_path, image, "a.png"))) == [RED, BLUE]


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([*BLACK, *RED])
    image.putdata([0, 1])
    path = save(tmp_path, image, "a.png", transparency=0)
    assert mode_on_disk(path) == "P"
    assert rgb_pixels(load_image(path)) == [WHITE, RED]  # transparent black -> white, not black
    gif = save(tmp_path, image, "a.gif", transparency=0)
    assert rgb_pixels(load_image(gif)) == [WHITE, RED]


def test_rgb_with_transparent_colour(tmp_path: Path) -> None:
    image = Image.new("RGB", (2, 1))
    image.putdata([BLACK, RED])
    path = save(tmp_path, image, "a.png", transparency=BLACK)
    assert rgb_pixels(load_image(path)) == [WHITE, RED]


def test_cmyk(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1))
    image.putdata([(0, 0, 0, 0), (0, 255, 255, 0)])
    path = save(tmp_path, image, "a.tif")
    assert mode_on_disk(path) == "CMYK"
    assert rgb_pixels(load_image(path)) == [WHITE, RED]


def test_16bit_greyscale(tmp_path: Path) -> None:
    image = Image.new("I;16", (4, 1))
    image.putdata([0, 255, 32768, 65535])
    path = save(tmp_path, image, "a.png")
    assert mode_on_disk(path) in ("I;16", "I")
    out = rgb_pixels(load_image(path))
    assert out[0] == BLACK
    assert out[1][0] <= 1  # 255 of 65535 is almost black, not white
    assert abs(out[2][0] - 128) <= 1
    assert out[3] == WHITE


def test_16bit_big_endian() -> None:
    image = Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 32768, 65535))
    assert [p[0] for p in rgb_pixels(load_image(image))] == [128, 255]


def test_mode_i() -> None:
    image = Image.new("I", (4, 1))
    image.putdata([-5, 0, 32768, 70000])  # out of the 16-bit range is clipped
    assert [p[0] for p in rgb_pixels(load_image(image))] == [0, 0, 128, 255]


def test_mode_f(tmp_path: Path) -> None:
    unit = Image.new("F", (3, 1))
    unit.putdata([0.0, 0.5, 1.0])  # 0..1 floats
    path = save(tmp_path, unit, "a.tif")
    assert mode_on_disk(path) == "F"
    assert [p[0] for p in rgb_pixels(load_image(path))] == [0, 128, 255]
    byte_range = Image.new("F", (3, 1))
    byte_range.putdata([0.0, 200.0, 300.0])  # 0..255 floats; above 255 is clipped
    assert [p[0] for p in rgb_pixels(load_image(byte_range))] == [0, 200, 255]


def test_one_bit(tmp_path: Path) -> None:
    image = Image.new("1", (2, 1))
    image.putdata([0, 1])
    assert rgb_pixels(load_image(save(tmp_path, image, "a.png"))) == [BLACK, WHITE]


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "RGBa", "PA", "La", "L"])
def test_other_modes_become_rgb(mode: str) -> None:
    assert load_image(Image.new(mode, (3, 2))).mode == "RGB"


def test_one_by_one_pixel(tmp_path: Path) -> None:
    out = load_image(save(tmp_path, Image.new("RGB", (1, 1), BLUE), "a.png"))
    assert (out.mode, out.size, out.getpixel((0, 0))) == ("RGB", (1, 1), BLUE)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as on_disk:
        assert on_disk.n_frames == 2
    out = load_image(path)
    assert (out.mode, out.size, out.getpixel((0, 0))) == ("RGB", (4, 4), RED)


def test_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), RED)
    image.paste(BLUE, (10, 0, 20, 10))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = save(tmp_path, image, "a.jpg", exif=exif)
    out = load_image(path)
    assert out.size == (10, 20)
    top, bottom = out.getpixel((5, 2)), out.getpixel((5, 17))
    assert top[0] > 200 and top[2] < 60  # stored left edge is displayed on top
    assert bottom[2] > 200 and bottom[0] < 60


# --- source kinds ---------------------------------------------------------------


def test_bytes_input() -> None:
    data = png_bytes(Image.new("RGBA", (3, 2), (0, 0, 0, 0)))
    for source in (data, bytearray(data)):
        out = load_image(source)
        assert (out.mode, out.size, out.getpixel((0, 0))) == ("RGB", (3, 2), WHITE)


def test_path_kinds(tmp_path: Path) -> None:
    path = save(tmp_path, Image.new("L", (3, 2), 7), "a.png")
    for source in (path, str(path)):
        out = load_image(source)
        assert (out.mode, out.size, out.getpixel((0, 0))) == ("RGB", (3, 2), (7, 7, 7))


def test_pil_input_is_not_modified() -> None:
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == WHITE
    assert rgba.mode == "RGBA"
    rgb = Image.new("RGB", (2, 2), RED)
    out = load_image(rgb)
    assert out is not rgb and out.getpixel((0, 0)) == RED


def test_load_images(tmp_path: Path) -> None:
    good = save(tmp_path, Image.new("RGB", (2, 2), RED), "a.png")
    images = load_images([good, png_bytes(Image.new("L", (1, 1))), Image.new("P", (3, 3))])
    assert [(im.mode, im.size) for im in images] == [("RGB", (2, 2)), ("RGB", (1, 1)), ("RGB", (3, 3))]
    assert load_images([]) == []
    with pytest.raises(ImageError, match="image #1: image file not found"):
        load_images([good, tmp_path / "missing.png"])
    for single in (str(good), good, good.read_bytes(), Image.new("RGB", (2, 2), RED)):  # one image, not a list
        assert [(im.mode, im.size) for im in load_images(single)] == [("RGB", (2, 2))]  # type: ignore[arg-type]


def test_no_raw_exception_escapes() -> None:
    png = png_bytes(Image.new("RGB", (32, 32), RED))
    bad_sources = [
        b"\x89PNG\r\n\x1a\n",  # signature only
        png[:40],
        png[:-12],  # missing IEND
        b"GIF89a" + b"\xff" * 20,
        b"BM" + b"\x00" * 60,
        os.urandom(1000),
    ]
    for source in bad_sources:
        try:
            load_image(source)
        except ImageError:
            pass

"""Image references in requests → decoded images, under the server's limits.

Accepted: ``data:image/...;base64,...`` URLs; ``http(s)://`` URLs only when the server
was started with ``--allow-remote-images`` and the host is in its ``--allow-host``
list (no redirects followed: a redirect could leave the list). Never a local path or
``file:`` URL: a request must not read the server's disk. Decoding goes through
:func:`llavakit.images.load_image` (the same pixels as every other entry point);
byte and pixel limits are checked before decoding, and answer 413.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from dataclasses import dataclass
from io import BytesIO
from urllib.parse import urlsplit

from PIL import Image

from llavakit.errors import ImageError
from llavakit.images import load_image
from llavakit.serve.errors import ImageTooLargeError
from llavakit.serve.settings import ServeSettings

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


@dataclass
class ImageRef:
    """One image of a request: its bytes (data URL) or a remote URL still to fetch."""

    index: int
    data: bytes | None = None
    url: str | None = None


def parse_image_url(url: str, index: int, settings: ServeSettings) -> ImageRef:
    """Check an ``image_url`` and decode a data URL's bytes; raise ImageError saying what is allowed."""
    name = f"image #{index}"
    if url[:5].lower() == "data:":
        return ImageRef(index, data=_decode_data_url(url, name, settings.max_image_bytes))
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("http", "https"):
        if not settings.allow_remote_images:
            raise ImageError(f"{name}: http(s) image URLs are disabled on this server; send the image as a "
                             "data:image/...;base64 URL (or start the server with --allow-remote-images --allow-host)")
        host = (urlsplit(url).hostname or "").lower()
        if host not in settings.allowed_hosts:
            raise ImageError(f"{name}: host {host!r} is not in the server's allow-list {list(settings.allowed_hosts)}")
        return ImageRef(index, url=url)
    shown = url if len(url) <= 60 else url[:57] + "..."
    raise ImageError(f"{name}: {shown!r} is not an accepted image URL: use a data:image/...;base64 URL"
                     + (" or an http(s) URL on the allow-list" if settings.allow_remote_images else "")
                     + " (local paths and file: URLs are never read)")


def _decode_data_url(url: str, name: str, max_bytes: int) -> bytes:
    match = _DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise ImageError(f"{name}: malformed data URL; expected data:image/<type>;base64,<data>")
    mime = (match.group("mime") or "").lower()
    if mime and not (mime.startswith("image/") or mime == "application/octet-stream"):
        raise ImageError(f"{name}: data URL has media type {mime!r}; expected image/*")
    payload = url[match.end():]
    if len(payload) * 3 // 4 > max_bytes + 3:  # checked before decoding anything
        raise ImageTooLargeError(f"{name} is about {len(payload) * 3 // 4} bytes, more than the server's limit "
                                 f"of {max_bytes} bytes per image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{name}: data URL is not valid base64 ({exc})") from None


async def fetch_remote(refs: list[ImageRef], settings: ServeSettings) -> None:
    """Download the allowed http(s) images in ``refs`` (in place), streaming with the byte limit."""
    remote = [r for r in refs if r.url is not None]
    if not remote:
        return
    import httpx

    async with httpx.AsyncClient(timeout=settings.remote_timeout_s, follow_redirects=False) as client:
        for ref in remote:
            name = f"image #{ref.index} ({ref.url})"
            try:
                async with client.stream("GET", ref.url) as response:
                    if response.status_code != 200:
                        raise ImageError(f"{name}: the server answered HTTP {response.status_code} "
                                         "(redirects are not followed)")
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > settings.max_image_bytes:
                            raise ImageTooLargeError(f"{name} is more than the limit of "
                                                     f"{settings.max_image_bytes} bytes per image")
                        chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise ImageError(f"{name}: could not fetch it ({type(exc).__name__}: {exc})") from None
            ref.data = b"".join(chunks)


def decode_images(refs: list[ImageRef], settings: ServeSettings) -> list[Image.Image]:
    """Decode fetched images in order; too many pixels is 413, anything unreadable 400."""
    images = []
    for ref in refs:
        assert ref.data is not None
        name = f"image #{ref.index}"
        pixels = _header_pixels(ref.data)
        if pixels is None or pixels > settings.max_image_pixels:
            shown = "too many to open" if pixels is None else str(pixels)
            raise ImageTooLargeError(f"{name} has {shown} pixels, more than the server's limit of "
                                     f"{settings.max_image_pixels} pixels per image")
        try:
            images.append(load_image(ref.data, max_pixels=settings.max_image_pixels,
                                     max_bytes=settings.max_image_bytes))
        except ImageError as exc:
            raise ImageError(f"{name}: {exc}") from None
    return images


def _header_pixels(data: bytes) -> int | None:
    """Pixel count from the header alone; None for a decompression bomb, 0 when unreadable (load_image says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as image:
                return image.width * image.height
    except Image.DecompressionBombError:
        return None
    except Exception:  # not an image: load_image gives the clear message
        return 0

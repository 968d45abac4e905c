"""From what a user typed to chat messages: placing images, checking ``<image>`` tags.

Rules, the same for every backend and for the CLI, Python and HTTP:
- a prompt with no ``<image>`` tag and N images gets the N images in front of the
  text (LLaVA's own convention, "<image>\\nQuestion");
- a prompt with tags must have exactly one tag per image, and the images fill the
  tags in order;
- anything else is an error that says how many tags and images there were.
"""

from __future__ import annotations

from llavakit.data.chat_templates import IMAGE_TOKEN
from llavakit.errors import PromptError


def user_content(prompt: str, n_images: int) -> list[dict]:
    """Return the content parts of one user turn: image and text parts in order."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    tags = prompt.count(IMAGE_TOKEN)
    if tags == 0:
        parts: list[dict] = [{"type": "image"} for _ in range(n_images)]
        return parts + ([{"type": "text", "text": prompt}] if prompt else [])
    if tags != n_images:
        raise PromptError(
            f"the prompt has {tags} {IMAGE_TOKEN} tag(s) but {n_images} image(s) were given: "
            f"use exactly one {IMAGE_TOKEN} tag per image, or no tag to put all images before the text"
        )
    parts = []
    for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        if i > 0:
            parts.append({"type": "image"})
            chunk = chunk[1:] if chunk.startswith("\n") else chunk  # the template writes "<image>\n"
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def count_images(messages: list[dict]) -> int:
    """Number of image parts in a conversation."""
    return sum(
        1
        for m in messages
        if not isinstance(m.get("content"), str)
        for part in m.get("content", [])
        if part.get("type") in ("image", "image_url")
    )

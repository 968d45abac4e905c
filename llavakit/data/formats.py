"""Training data files → :class:`Sample` lists, and validation before training starts.

Accepted layouts (detected per sample, so one file may mix them):

* **LLaVA JSON** — ``{"id", "image", "conversations": [{"from": "human", "value":
  "<image>\\n..."}, {"from": "gpt", "value": ...}]}``; ``image`` may be absent
  (text-only), a string or a list (several images, one ``<image>`` tag each).
* **HF messages** (``HuggingFaceH4/llava-instruct-mix-vsft``) — ``{"messages":
  [{"role", "content"}], "images": [...]}``; ``content`` is a string (with
  optional ``<image>`` tags) or a list of parts ``{"type": "image"}`` /
  ``{"type": "text", "text": ...}``. An image part may carry its own image
  (``"image"``, ``"path"`` or ``"url"`` key) instead of using ``images``.

Files: a JSON list, a JSON object with a ``data``/``samples`` list, JSONL (one
sample a line), or a ``datasets`` directory saved with ``save_to_disk``.
Images: a path relative to the data file's folder (or ``image_root``), an
absolute path, raw bytes, a ``{"bytes": ..., "path": ...}`` dict (what
``datasets`` stores), base64 text or a ``data:image/...;base64,`` URL.

Design decisions:

* Reading never raises on a bad *sample*: problems are recorded on the sample
  (``Sample.errors``) with its id and file position, and :func:`validate`
  reports them all at once — a whole-file check before the first step, so a
  run never dies mid-epoch on sample 90 000. Only an unreadable *file* raises.
* Messages are normalised to the list-of-parts form the chat templates and the
  runtime use (``{"type": "image"}`` where each ``<image>`` tag was, the
  newline LLaVA writes after the tag dropped, as the vicuna template re-adds it).
* Images stay references (paths or bytes) until a training step needs them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.data.chat_templates import IMAGE_TOKEN
from llavakit.errors import LlavakitError

ImageRef = str | bytes  # absolute path, or encoded image bytes

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
          "bot": "assistant", "system": "system"}
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


class DataError(LlavakitError):
    """A data file or some of its samples cannot be used for training (the message lists them)."""


@dataclass
class Sample:
    """One training conversation, normalised.

    ``messages``: ``[{"role": "system"|"user"|"assistant", "content": [parts]}]`` with
    parts ``{"type": "image"}`` and ``{"type": "text", "text": str}``; ``images``: one
    reference per image part, in order; ``meta``: every other key of the record
    (``family``, ``answer``, ... for shapes world); ``where``: "file:line" for messages.
    """

    id: str
    messages: list[dict]
    images: list[ImageRef] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    where: str = ""
    errors: list[str] = field(default_factory=list)

    def image_parts(self) -> int:
        return sum(p.get("type") == "image" for m in self.messages for p in m["content"])

    def text_of(self, message: dict) -> str:
        return "".join(p.get("text") or "" for p in message["content"] if p.get("type") == "text")


# ------------------------------------------------------------------------------------------ reading


def read_dataset(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None) -> list[Sample]:
    """Read every sample of a data file (see the module docstring for the layouts)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    root = Path(image_root) if image_root else (path if path.is_dir() else path.parent)
    records = _load_records(path)
    return [_to_sample(rec, where, root) for where, rec in records]


def _load_records(path: Path) -> list[tuple[str, Any]]:
    if path.is_dir():
        return _load_saved_dataset(path)
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if path.suffix == ".jsonl" or (stripped and stripped[0] == "{" and not _is_one_json(stripped)):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path.name}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((f"{path.name}:{n}", _Broken(f"line is not valid JSON ({exc.msg})")))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}) nor JSONL") from exc
    if isinstance(data, dict):
        for key in ("data", "samples", "train"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}; expected a list of samples")
    return [(f"{path.name}[{i}]", rec) for i, rec in enumerate(data)]


def _is_one_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def _load_saved_dataset(path: Path) -> list[tuple[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{path} is a directory; reading a saved `datasets` directory needs `pip install datasets`"
                        ) from exc
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for "not a dataset dir"
        raise DataError(f"{path} is not a dataset saved with datasets.save_to_disk: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    return [(f"{path.name}[{i}]", rec) for i, rec in enumerate(ds)]


class _Broken:
    def __init__(self, why: str) -> None:
        self.why = why


def _to_sample(rec: Any, where: str, root: Path) -> Sample:
    if isinstance(rec, _Broken):
        return Sample(id=where, messages=[], where=where, errors=[rec.why])
    if not isinstance(rec, dict):
        return Sample(id=where, messages=[], where=where, errors=[f"sample is a {type(rec).__name__}, not an object"])
    sid = str(rec.get("id", where))
    sample = Sample(id=sid, messages=[], where=where)
    try:
        if "conversations" in rec:
            _from_llava(rec, sample, root)
        elif "messages" in rec:
            _from_messages(rec, sample, root)
        else:
            sample.errors.append("has neither 'conversations' (LLaVA) nor 'messages' (HF) key")
    except _Bad as exc:
        sample.errors.append(str(exc))
    skip = {"id", "conversations", "messages", "image", "images"}
    sample.meta = {k: v for k, v in rec.items() if k not in skip}
    return sample


class _Bad(Exception):
    """A sample-level problem, recorded on the sample."""


def _split_tags(text: str) -> list[dict]:
    """Text with ``<image>`` tags → parts; the newline right after a tag belongs to the tag."""
    parts: list[dict] = []
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i > 0:
            parts.append({"type": "image"})
            chunk = chunk.removeprefix("\n")
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _from_llava(rec: dict, sample: Sample, root: Path) -> None:
    conv = rec["conversations"]
    if not isinstance(conv, list):
        raise _Bad("'conversations' is not a list")
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise _Bad(f"turn {i} is not an object")
        role = _ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        if role is None:
            raise _Bad(f"turn {i} has unknown speaker {turn.get('from')!r}; expected human/gpt/system")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise _Bad(f"turn {i} value is {type(value).__name__}, expected a string")
        sample.messages.append({"role": role, "content": _split_tags(value)})
    image = rec.get("image", rec.get("images"))
    refs = [] if image in (None, "", []) else image if isinstance(image, list) else [image]
    sample.images = [_image_ref(r, root) for r in refs]


def _from_messages(rec: dict, sample: Sample, root: Path) -> None:
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        raise _Bad("'messages' is not a list")
    inline: list[ImageRef] = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise _Bad(f"message {i} is not an object")
        role = _ROLES.get(str(msg.get("role", "")).lower())
        if role is None:
            raise _Bad(f"message {i} has unknown role {msg.get('role')!r}; expected system/user/assistant")
        content = msg.get("content")
        if isinstance(content, str):
            parts = _split_tags(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("image", "image_url"):
                    parts.append({"type": "image"})
                    src = part.get("image") or part.get("path") or part.get("url") or part.get("image_url")
                    if isinstance(src, dict):
                        src = src.get("url") or src.get("bytes") or src.get("path")
                    if src:
                        inline.append(_image_ref(src, root))
                elif kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise _Bad(f"message {i} has a text part whose text is {type(text).__name__}")
                    parts.extend(_split_tags(text))
                else:
                    raise _Bad(f"message {i} has a content part of type {kind!r}; expected 'image' or 'text'")
        elif content is None:
            parts = []
        else:
            raise _Bad(f"message {i} content is {type(content).__name__}; expected a string or a list of parts")
        sample.messages.append({"role": role, "content": parts})
    images = rec.get("images") or ([rec["image"]] if rec.get("image") else [])
    if not isinstance(images, list):
        images = [images]
    if images and inline:
        raise _Bad("images are given both inline in the messages and in 'images'; use one")
    sample.images = inline or [_image_ref(r, root) for r in images]


def _image_ref(ref: Any, root: Path) -> ImageRef:
    """Path (resolved against ``root``), bytes, datasets' {"bytes","path"} dict, base64 or data URL."""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return _image_ref(ref["bytes"], root)
        if ref.get("path"):
            return _image_ref(ref["path"], root)
        raise _Bad("image entry is a dict without 'bytes' or 'path'")
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if hasattr(ref, "save") and hasattr(ref, "mode"):  # a PIL image (datasets' Image feature decodes to one)
        from io import BytesIO

        buf = BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue()
    if not isinstance(ref, str) or not ref:
        raise _Bad(f"image reference is {type(ref).__name__}; expected a path, bytes or base64 text")
    if _DATA_URL.match(ref):
        return _b64(ref.split(",", 1)[1])
    if ref.startswith(("http://", "https://")):
        raise _Bad(f"image {ref[:80]} is a URL; download images first (training reads local files)")
    path = Path(ref).expanduser()
    resolved = path if path.is_absolute() else (root / path)
    if len(ref) >= 24 and _BASE64.match(ref) and not resolved.exists():
        data = _b64(ref)
        if data.startswith(_IMAGE_MAGIC) or data[8:12] == b"WEBP":
            return data
    return str(resolved)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise _Bad(f"image is neither a path nor valid base64 ({exc})") from exc


# ---------------------------------------------------------------------------------------- validation


def sample_problems(sample: Sample, deep: bool = False) -> list[str]:
    """Everything wrong with one sample (empty list: usable). ``deep`` decodes its images."""
    problems = list(sample.errors)
    if problems:
        return problems
    msgs = sample.messages
    if not msgs:
        return ["no conversation turns"]
    body = [m for m in msgs if m["role"] != "system"]
    if any(m["role"] == "system" for m in msgs[1:]):
        problems.append("a system message after the first turn")
    if not body or body[0]["role"] != "user":
        problems.append("the conversation does not start with a user turn")
    for a, b in zip(body, body[1:]):
        if a["role"] == b["role"]:
            problems.append(f"two {a['role']} turns in a row")
            break
    assistants = [m for m in body if m["role"] == "assistant"]
    if not assistants:
        problems.append("no assistant turn (nothing to train on)")
    elif body[-1]["role"] != "assistant":
        problems.append("the conversation ends with a user turn (it would get no answer to train on)")
    for n, m in enumerate(assistants, 1):
        if not sample.text_of(m).strip():
            problems.append(f"assistant turn {n} is empty")
        if any(p.get("type") == "image" for p in m["content"]):
            problems.append(f"assistant turn {n} contains an image")
    tags = sample.image_parts()
    if tags != len(sample.images):
        problems.append(f"{tags} {IMAGE_TOKEN} tag(s) but {len(sample.images)} image(s)")
    for ref in sample.images:
        problem = _image_problem(ref, deep)
        if problem:
            problems.append(problem)
    return problems


def _image_problem(ref: ImageRef, deep: bool) -> str | None:
    from PIL import Image, UnidentifiedImageError

    from llavakit.images import load_image

    if isinstance(ref, str) and not os.path.isfile(ref):
        return f"image file {ref} does not exist"
    try:
        if deep:
            load_image(ref)
        else:  # header only: cheap enough for a million samples, catches non-images and empty files
            from io import BytesIO

            with Image.open(ref if isinstance(ref, str) else BytesIO(ref)) as im:
                im.size  # noqa: B018
    except LlavakitError as exc:
        return str(exc)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        name = ref if isinstance(ref, str) else f"<{len(ref)} bytes>"
        return f"image {name} cannot be read ({exc.__class__.__name__}: {exc})"
    return None


def validate(samples: list[Sample], skip_bad: bool = False, deep: bool = False, max_listed: int = 20
             ) -> list[Sample]:
    """Check every sample before training; return the usable ones.

    With ``skip_bad=False`` any problem raises one :class:`DataError` listing the bad
    samples by id and position (the first ``max_listed``) and their total count. With
    ``skip_bad=True`` bad samples are dropped with one warning that counts them; if
    none is left that is still an error. ``deep=True`` fully decodes every image
    (slower; the default reads headers only).
    """
    good, bad = [], []
    for sample in samples:
        problems = sample_problems(sample, deep)
        (bad if problems else good).append((sample, problems))
    if bad:
        listing = "\n".join(f"  {s.id} ({s.where}): {'; '.join(p)}" for s, p in bad[:max_listed])
        more = f"\n  ... and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
        if not skip_bad:
            raise DataError(f"{len(bad)} of {len(samples)} samples are unusable (pass skip_bad / --skip-bad "
                            f"to drop them):\n{listing}{more}")
        warnings.warn(f"skipped {len(bad)} of {len(samples)} unusable samples:\n{listing}{more}", stacklevel=2)
    if not good:
        raise DataError(f"no usable samples (of {len(samples)})")
    return [s for s, _ in good]

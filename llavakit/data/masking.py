"""Encode a conversation for training: input ids, attention mask, labels on assistant tokens only.

The model's own chat template is the truth for the prompt format, and we do
not rely on ``{% generation %}`` tags (our vicuna template has none, on
purpose, so that OpenVINO GenAI can render it; most LM templates have none).
Instead the assistant spans are found by **rendering prefixes**:

* ``full``  = render(all messages)
* for assistant message *i*: ``start`` = len(render(messages[:i], add_generation_prompt=True))
  and ``end`` = len(render(messages[:i+1]))
* templates whose generation cue is not how past answers are written (an
  empty ``<think></think>`` only in the cue, as in Qwen3) start the span where
  the answer text itself starts, after render(messages[:i]).

Both prefixes must be prefixes of ``full`` (true for every template that
renders turns left to right — all we ship and all common LM templates), so
``full[start:end]`` is exactly what the template writes for that answer,
*including* its end-of-turn marker (``</s>``, ``<|im_end|>``), which the model
must learn to emit to stop. Trailing whitespace after the marker is not
trained. Character spans become token labels through the fast tokenizer's
offsets. Then ``<image>`` is expanded by the model's processor and the labels
are aligned to the processor's ids.

Nothing here can silently train on nothing (the LLaVA repo's "tokenization
mismatch → loss 0" failure): every step is checked and a failure raises
:class:`MaskingError` naming the sample — a template that is not
prefix-stable, an answer not found in its span, an answer with no end-of-turn
marker, a span that gets no tokens, ids that differ from the processor's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llavakit.data.chat_templates import IMAGE_TOKEN
from llavakit.errors import LlavakitError

IGNORE_INDEX = -100


class MaskingError(LlavakitError):
    """The assistant tokens of a conversation could not be located exactly."""


@dataclass
class Encoded:
    """One training example. ``pixel_values`` is None for text-only samples."""

    input_ids: torch.Tensor  # (T,) long
    attention_mask: torch.Tensor  # (T,) long
    labels: torch.Tensor  # (T,) long, IGNORE_INDEX except assistant tokens
    pixel_values: torch.Tensor | None = None  # (N_images, C, H, W)
    extra: dict[str, torch.Tensor] | None = None  # e.g. image_sizes for LLaVA-NeXT

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def render(processor: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    """The model's chat template applied to list-of-parts messages (as the runtime renders them)."""
    renderer = processor if getattr(processor, "chat_template", None) else getattr(processor, "tokenizer", processor)
    return renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(processor: Any, messages: list[dict], sample_id: str = "?") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn (answer + end marker)."""
    full = render(processor, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(processor, messages[:i], add_generation_prompt=True)
        through = render(processor, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(before) and full.startswith(through):
            # The generation cue differs from how past answers are written (e.g. an empty <think></think>
            # block only in the cue): train from where the answer itself starts instead.
            head = render(processor, messages[:i], add_generation_prompt=False)
            answer_text = _text(msg).strip()
            at = full.find(answer_text, len(head), len(through)) if full.startswith(head) and answer_text else -1
            if at >= 0:
                before = full[:at]
        if not full.startswith(before) or not full.startswith(through) or len(through) <= len(before):
            raise MaskingError(
                f"sample {sample_id}: the chat template does not render turn by turn (the text up to assistant "
                f"turn {len(spans) + 1} is not a prefix of the whole conversation), so its answer cannot be located"
            )
        answer = _text(msg)
        span_text = full[len(before): len(through)]
        at = span_text.find(answer.strip())
        if not answer.strip() or at < 0:
            raise MaskingError(f"sample {sample_id}: assistant turn {len(spans) + 1} ({answer[:40]!r}) is not "
                               f"where the chat template put it ({span_text[:60]!r})")
        end = len(through) - (len(span_text) - len(span_text.rstrip()))  # trailing newline after the marker
        if not full[len(before) + at + len(answer.strip()): end].strip():
            raise MaskingError(f"sample {sample_id}: the chat template writes no end-of-turn marker after an "
                               f"assistant turn, so the model could never learn to stop; use a template that does")
        spans.append((len(before), end))
    return full, spans


def _text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def encode_conversation(processor: Any, messages: list[dict], images: list | None = None, *,
                        sample_id: str = "?", max_length: int | None = None) -> Encoded:
    """Tokenize ``messages`` (list-of-parts) with the model's template; labels only on assistant spans.

    ``processor`` is the model's ``AutoProcessor`` (a LLaVA processor: it expands each
    ``<image>`` to the right number of image tokens); ``images`` are PIL images, one
    per image part. ``max_length`` truncates from the end but never into image tokens.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    full, spans = assistant_spans(processor, messages, sample_id)
    if not spans:
        raise MaskingError(f"sample {sample_id}: no assistant turn to train on")
    try:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise MaskingError(f"label masking needs a fast tokenizer (character offsets); "
                           f"{type(tokenizer).__name__} has none: {exc}") from exc
    ids0: list[int] = enc["input_ids"]
    labels0 = [IGNORE_INDEX] * len(ids0)
    for n, (start, end) in enumerate(spans, 1):
        # tokens overlapping the span (one straddling its start included), and every token between them:
        # tokenizers that trim offsets give whitespace tokens inside an answer zero width
        hits = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > start and s < end and e > s]
        if not hits:
            raise MaskingError(f"sample {sample_id}: assistant turn {n} maps to no tokens")
        for t in range(hits[0], hits[-1] + 1):
            labels0[t] = ids0[t]

    image_token_id = getattr(processor, "image_token_id", None)
    if image_token_id is None:
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    n_tags = sum(i == image_token_id for i in ids0)
    images = list(images or [])
    if n_tags != len(images):
        raise MaskingError(f"sample {sample_id}: {n_tags} {IMAGE_TOKEN} token(s) after rendering but "
                           f"{len(images)} image(s)")
    extra: dict[str, torch.Tensor] = {}
    pixel_values = None
    if images:
        batch = processor(text=full, images=images, add_special_tokens=False, return_tensors="pt")
        ids = batch["input_ids"][0].tolist()
        labels = _align(ids0, labels0, ids, image_token_id, sample_id)
        pixel_values = batch["pixel_values"]  # (N, C, H, W) or (N, patches, C, H, W) for NeXT
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "pixel_values")}
    else:
        ids, labels = ids0, labels0
    if max_length is not None and len(ids) > max_length:
        cut = ids[max_length:]
        if image_token_id in cut:
            raise MaskingError(f"sample {sample_id}: {len(ids)} tokens do not fit max_length={max_length} "
                               f"without cutting image tokens; raise max_length or drop the sample")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise MaskingError(f"sample {sample_id}: no assistant token left to train on (truncated to {len(ids)})")
    return Encoded(
        input_ids=torch.tensor(ids, dtype=torch.long),  # (T,)
        attention_mask=torch.ones(len(ids), dtype=torch.long),  # (T,)
        labels=torch.tensor(labels, dtype=torch.long),  # (T,)
        pixel_values=pixel_values,
        extra=extra or None,
    )


def _align(ids0: list[int], labels0: list[int], ids: list[int], image_token_id: int, sample_id: str) -> list[int]:
    """Carry labels over to the processor's ids, where each image tag became a run of image tokens."""
    labels: list[int] = []
    j = 0
    for tok in ids:
        if tok == image_token_id:
            labels.append(IGNORE_INDEX)
            continue
        while j < len(ids0) and ids0[j] == image_token_id:
            j += 1
        if j >= len(ids0) or ids0[j] != tok:
            raise MaskingError(f"sample {sample_id}: the processor's tokens differ from the tokenizer's at "
                               f"position {len(labels)} (tokenization mismatch); refusing to guess the labels")
        labels.append(labels0[j])
        j += 1
    while j < len(ids0) and ids0[j] == image_token_id:
        j += 1
    if j != len(ids0):
        raise MaskingError(f"sample {sample_id}: the processor dropped {len(ids0) - j} tokens")
    return labels

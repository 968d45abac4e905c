"""A torch Dataset over :class:`~llavakit.data.formats.Sample` lists, and the batch collator.

``ConversationDataset`` loads images lazily (``llavakit.images.load_image``, so
training sees exactly the pixels inference sees) and encodes with
:func:`~llavakit.data.masking.encode_conversation`. ``Collator`` pads a list of
:class:`~llavakit.data.masking.Encoded` into the batch dict
``LlavaForConditionalGeneration.forward`` takes, or packs them into one row.

Design decisions:

* Right padding with the tokenizer's pad id, ``attention_mask`` 0 and labels
  ``-100`` on pads; ``pixel_values`` of all samples concatenated along the
  image axis (LLaVA takes (total_images, C, H, W) and fills image tokens in
  order), so text-only and multi-image samples mix freely in a batch.
* ``pack=True`` concatenates the samples into a single row without padding and
  restarts ``position_ids`` at each sample — the layout transformers'
  ``DataCollatorWithFlattening`` uses. Attention is kept inside each sample only
  by kernels that read packed ``position_ids`` (``flash_attention_2``, or
  transformers' varlen paths); with plain SDPA samples would see each other,
  so the trainer decides when to use it.
* ``pad_to_multiple_of`` rounds lengths up (tensor-core friendly shapes, fewer
  recompilations under ``torch.compile``).
* A sample whose image cannot be read at step time (a file removed after
  validation) is replaced by the next good one with a warning, counted in
  ``dataset.failures``: a run never dies mid-epoch on one file.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from llavakit.data.formats import Sample
from llavakit.data.masking import IGNORE_INDEX, Encoded, encode_conversation
from llavakit.data.word_swap import WordSwap
from llavakit.errors import LlavakitError


class ConversationDataset(Dataset):
    """Validated samples → :class:`Encoded` examples, images read when an item is asked for."""

    def __init__(self, samples: list[Sample], processor: Any, max_length: int | None = None,
                 swap: WordSwap | None = None) -> None:
        self.samples = samples
        self.processor = processor
        self.max_length = max_length
        self.swap = swap  # noisy teacher forcing of answer words (word_swap.py), training data only
        self.failures: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def encode(self, index: int) -> Encoded:
        """Encode sample ``index``; raises LlavakitError (image or masking problem) naming it."""
        from llavakit.images import load_image

        sample = self.samples[index]
        try:
            images = [load_image(ref) for ref in sample.images]
        except LlavakitError as exc:
            raise LlavakitError(f"sample {sample.id} ({sample.where}): {exc}") from exc
        encoded = encode_conversation(self.processor, sample.messages, images, sample_id=sample.id,
                                      max_length=self.max_length)
        if self.swap is None:
            return encoded
        # torch.initial_seed() differs per dataloader worker and epoch: fresh swaps each pass, reproducible per seed
        return self.swap(encoded, random.Random(f"{torch.initial_seed()}/{index}"))

    def __getitem__(self, index: int) -> Encoded:
        for offset in range(min(len(self.samples), 50)):
            i = (index + offset) % len(self.samples)
            try:
                return self.encode(i)
            except LlavakitError as exc:
                self.failures.append(str(exc))
                warnings.warn(f"skipping a sample at step time: {exc}", stacklevel=2)
        raise LlavakitError(f"50 samples in a row failed to encode; last: {self.failures[-1]}")


@dataclass
class Collator:
    """Pad (or pack) :class:`Encoded` examples into a batch for ``LlavaForConditionalGeneration``."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack: bool = False

    @classmethod
    def for_processor(cls, processor: Any, **kwargs: Any) -> Collator:
        tok = getattr(processor, "tokenizer", processor)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(pad_token_id=int(pad), **kwargs)

    def __call__(self, examples: list[Encoded]) -> dict[str, torch.Tensor]:
        batch = self._pack(examples) if self.pack else self._pad(examples)
        pixels = [e.pixel_values for e in examples if e.pixel_values is not None]
        if pixels:
            batch["pixel_values"] = _concat_images(pixels)  # (sum of images, C, H, W) or (..., patches, C, H, W)
        extras = [e.extra for e in examples if e.extra]
        for key in extras[0] if extras else ():
            batch[key] = torch.cat([x[key] for x in extras], dim=0)  # e.g. image_sizes (sum of images, 2)
        return batch

    def _round(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else (n + m - 1) // m * m

    def _pad(self, examples: list[Encoded]) -> dict[str, torch.Tensor]:
        width = self._round(max(len(e) for e in examples))
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, e in enumerate(examples):
            n = len(e)
            ids[row, :n] = e.input_ids
            mask[row, :n] = e.attention_mask
            labels[row, :n] = e.labels
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _pack(self, examples: list[Encoded]) -> dict[str, torch.Tensor]:
        ids = torch.cat([e.input_ids for e in examples])  # (sum T,)
        labels = torch.cat([e.labels.clone() for e in examples])  # (sum T,)
        starts = torch.cumsum(torch.tensor([0] + [len(e) for e in examples[:-1]]), 0)
        labels[starts[1:]] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
        positions = torch.cat([torch.arange(len(e)) for e in examples])  # (sum T,)
        width = self._round(len(ids))
        pad = width - len(ids)
        if pad:
            ids = torch.cat([ids, torch.full((pad,), self.pad_token_id, dtype=torch.long)])
            labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
            positions = torch.cat([positions, torch.arange(pad)])
        # No attention_mask: packed kernels find sample boundaries where position_ids restart.
        return {"input_ids": ids[None], "labels": labels[None], "position_ids": positions[None]}  # (1, T)


def _concat_images(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-sample pixel tensors along the image axis.

    LLaVA-NeXT gives (images, patches, C, H, W) with a patch count that depends on each
    image's size; shorter ones are zero-padded on the patch axis — the model keeps only
    the real patches of each image (it recomputes their number from ``image_sizes``).
    """
    if pixels[0].dim() == 5 and len({p.shape[1] for p in pixels}) > 1:
        most = max(p.shape[1] for p in pixels)
        pixels = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixels]
    return torch.cat(pixels, dim=0)

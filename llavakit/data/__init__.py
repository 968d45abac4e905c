"""Training data: read, validate, encode with label masking, batch — plus the shapes-world generator.

The API the trainer uses::

    from llavakit.data import read_dataset, validate, ConversationDataset, Collator

    samples = validate(read_dataset("data/train.json"), skip_bad=False)   # raises DataError listing bad ids
    processor = AutoProcessor.from_pretrained(model_dir)                   # a llavakit-built LLaVA's processor
    dataset = ConversationDataset(samples, processor, max_length=1024)     # images loaded lazily
    collator = Collator.for_processor(processor, pad_to_multiple_of=8)     # or pack=True
    batch = collator([dataset[0], dataset[1]])   # input_ids, attention_mask, labels, pixel_values
    loss = model(**batch).loss

* :func:`read_dataset` (``formats.py``): LLaVA JSON / JSON list / JSONL, HF
  ``messages`` + ``images`` (JSONL, JSON, a ``datasets`` saved directory);
  text-only samples; images by relative path (relative to the data file, or
  ``image_root``), absolute path, bytes, base64 or data URL. Returns
  :class:`Sample` (normalised list-of-parts ``messages``, ``images``, ``meta``).
* :func:`validate` (``formats.py``): missing/unreadable image, ``<image>`` tags
  ≠ images, empty assistant turn, bad roles or order, malformed records — one
  :class:`DataError` listing every bad sample id, or ``skip_bad=True`` to drop
  them with one counted warning.
* :func:`encode_conversation` (``masking.py``): renders with the model's own chat
  template, labels (``-100`` elsewhere) only on assistant answers and their
  end-of-turn token, found by rendering prefixes (no ``{% generation %}`` tag
  needed); raises :class:`MaskingError` rather than ever training on nothing.
* :class:`ConversationDataset`, :class:`Collator` (``collate.py``).
* ``llavakit.data.shapes``: the synthetic visual-QA generator (``llavakit data shapes``).
"""

from llavakit.data.formats import DataError, Sample, read_dataset, sample_problems, validate

__all__ = [
    "IGNORE_INDEX",
    "Collator",
    "ConversationDataset",
    "DataError",
    "Encoded",
    "MaskingError",
    "Sample",
    "encode_conversation",
    "read_dataset",
    "sample_problems",
    "validate",
]


def __getattr__(name: str):
    """Torch-dependent parts load on first use, so reading/validating data stays light."""
    if name in ("Collator", "ConversationDataset"):
        from llavakit.data import collate

        return getattr(collate, name)
    if name in ("Encoded", "IGNORE_INDEX", "MaskingError", "encode_conversation"):
        from llavakit.data import masking

        return getattr(masking, name)
    raise AttributeError(f"module 'llavakit.data' has no attribute {name!r}")

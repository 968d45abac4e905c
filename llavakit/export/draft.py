"""Export a draft language model for speculative decoding (``runtime/speculative.py``).

A draft is a text-only causal LM that shares the main VLM's tokenizer. It is
exported with the same converters as a LLaVA's language model (``convert.py``):
a stateful LM taking ``inputs_embeds`` plus a text-embeddings model, so the
runtime drives both models the same way and trims both KV states the same way.

The source may be a plain causal LM directory (``AutoModelForCausalLM``) or a
LLaVA checkpoint, whose language model then becomes the draft (useful as the
upper bound: a draft equal to the target accepts every token).

Layout of the output directory: the two IR models under the export names, the
text config as ``config.json``, the HF tokenizer files (the runtime compares
them with the main model's to refuse a draft of another vocabulary), and
``llavakit_draft.json`` as the marker of a complete draft.

Reduced-vocabulary head (``head_size``). A small draft's cost is mostly its LM
head: a 2-layer, hidden-256 draft on SmolLM2's 49k vocabulary reads 12.6 M head
weights per token against 1.6 M in its layers. The draft only has to guess the
target's next token, and a few thousand ids cover almost everything the target
says, so the export can keep the head rows of the ``head_size`` most frequent
ids only (logits ``(B, T, N)``; the text embeddings keep the whole vocabulary,
so any prompt still reads right). The ids come frequency-ordered from
``draft_head.json`` next to the source (``scripts/gpu/train_draft.py`` writes
it from the target's own answers) and are written into the marker; the runtime
maps the N logits back to ids, and ids outside the head get q = 0, which
greedy verification and rejection sampling both handle exactly. Only
acceptance can suffer, when the target's token is outside the head.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import openvino as ov

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import LlavakitError, ModelLoadError
from llavakit.export import layout

DRAFT_MARKER = "llavakit_draft.json"
HEAD_FILE = "draft_head.json"  # {"head_ids": [...]}: ids most frequent first, next to a trained draft
LLAVA_TYPES = ("llava", "llava_next", "moe_llava")


def read_head_ids(src: Path, head_size: int, head_file: Path | None = None) -> list[int]:
    """The ``head_size`` most frequent ids from ``head_file`` (default: ``src/draft_head.json``), in order."""
    path = head_file or src / HEAD_FILE
    if not path.is_file():
        raise LlavakitError(f"--head-size needs {path}: a JSON {{\"head_ids\": [...]}} listing token ids most "
                            "frequent first (scripts/gpu/train_draft.py writes one next to each draft)")
    try:
        ids = [int(i) for i in json.loads(path.read_text())["head_ids"]]
    except (ValueError, KeyError, TypeError) as err:
        raise LlavakitError(f"{path} is not a draft head file ({{\"head_ids\": [int, ...]}}): {err}") from err
    if head_size < 1 or not ids or len(set(ids)) != len(ids):
        raise LlavakitError(f"head size must be >= 1 and {path} must not repeat ids (got size {head_size})")
    return ids[:head_size]


def head_subset(head, head_ids: list[int]):
    """A bias-free linear layer with the rows ``head_ids`` of ``head``: logits (B, T, N) for those ids only."""
    import torch

    weight = head.weight.detach()[torch.tensor(head_ids)]  # (N, D)
    small = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    small.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    return small


def export_draft_lm(source: str | Path, out: str | Path, weights: str = "fp32", force: bool = False,
                    head_size: int | None = None, head_file: Path | None = None) -> Path:
    """Export the causal LM (or a LLaVA's LM) at ``source`` to ``out`` as a draft; returns ``out``.

    ``head_size``: keep only that many head rows (the most frequent ids of ``head_file``; module docstring).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from llavakit.export.compress import CompressionOptions, compress_language_model, save_as_fp16
    from llavakit.export.convert import convert_language_model, convert_text_embeddings

    out = Path(out)
    if out.exists() and not force:
        raise LlavakitError(f"output directory {out} already exists; pass --force to replace it")
    options = CompressionOptions(weights=weights)
    options.validate()
    src = resolve_source(source, "draft model")
    config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    kind = config.get("model_type")
    start = time.perf_counter()
    with torch.no_grad():
        if kind in LLAVA_TYPES:
            import llavakit.models.moe_llava  # noqa: F401  (registers "moe_llava")

            model = AutoModelForImageTextToText.from_pretrained(src, dtype="float32").eval()
            text_config = model.config.get_text_config()
        elif kind:
            lm = AutoModelForCausalLM.from_pretrained(src, dtype="float32").eval()
            # The converters read a LLaVA's attribute names; a causal LM has the same pieces.
            model = SimpleNamespace(config=lm.config, model=SimpleNamespace(language_model=lm.model),
                                    lm_head=lm.lm_head, get_input_embeddings=lm.get_input_embeddings)
            text_config = lm.config
        else:
            raise ModelLoadError(f"{src} has no config.json with a model_type; a draft is a HF causal LM directory")
        head_ids = read_head_ids(src, head_size, head_file) if head_size else None
        if head_ids is not None:
            if max(head_ids) >= text_config.vocab_size or min(head_ids) < 0:
                raise LlavakitError(f"head ids must lie in [0, {text_config.vocab_size}) for this model")
            model.lm_head = head_subset(model.lm_head, head_ids)  # (N, D): logits for the head ids only
        tokenizer = AutoTokenizer.from_pretrained(src)
        with atomic_directory(out) as tmp:
            language = compress_language_model(convert_language_model(model), options)
            ov.save_model(language, tmp / layout.LANGUAGE_MODEL, compress_to_fp16=save_as_fp16(options, "language"))
            ov.save_model(convert_text_embeddings(model), tmp / layout.TEXT_EMBEDDINGS, compress_to_fp16=False)
            (tmp / layout.CONFIG).write_text(text_config.to_json_string())
            tokenizer.save_pretrained(tmp)
            (tmp / DRAFT_MARKER).write_text(json.dumps({
                "source": str(source), "weights": weights, "vocab_size": int(text_config.vocab_size),
                **({"head_ids": head_ids} if head_ids is not None else {}),
                "seconds": round(time.perf_counter() - start, 2)}, indent=2) + "\n")
    return out

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
LLAVA_TYPES = ("llava", "llava_next", "moe_llava")


def export_draft_lm(source: str | Path, out: str | Path, weights: str = "fp32", force: bool = False) -> Path:
    """Export the causal LM (or a LLaVA's LM) at ``source`` to ``out`` as a draft; returns ``out``."""
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
        tokenizer = AutoTokenizer.from_pretrained(src)
        with atomic_directory(out) as tmp:
            language = compress_language_model(convert_language_model(model), options)
            ov.save_model(language, tmp / layout.LANGUAGE_MODEL, compress_to_fp16=save_as_fp16(options, "language"))
            ov.save_model(convert_text_embeddings(model), tmp / layout.TEXT_EMBEDDINGS, compress_to_fp16=False)
            (tmp / layout.CONFIG).write_text(text_config.to_json_string())
            tokenizer.save_pretrained(tmp)
            (tmp / DRAFT_MARKER).write_text(json.dumps({
                "source": str(source), "weights": weights, "vocab_size": int(text_config.vocab_size),
                "seconds": round(time.perf_counter() - start, 2)}, indent=2) + "\n")
    return out

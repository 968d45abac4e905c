"""Export an EAGLE feature draft (``runtime/eagle.py``) next to the VLM it drafts for.

Input: the directory ``scripts/gpu/train_eagle.py`` writes — ``config.json`` and ``model.safetensors`` of
the draft's body (a LlamaModel of 1-2 layers + final norm, no embedding table), ``eagle_fc.safetensors``
(``weight`` (H, 2H), ``bias`` (H,)), ``draft_head.json`` and the tokenizer (without one, the target's).
The draft has no LM head of its own: it predicts the TARGET's feature, so its logits come from the target's head, which is read from
the target checkpoint here (``--target``), cut to the ``head_size`` most frequent ids like any draft.

Output: the same layout as ``export/draft.py`` (stateful language model IR, ``config.json``, tokenizer,
``llavakit_draft.json`` with ``"kind": "eagle"``), no text-embeddings model (the runtime embeds drafted
tokens with the target's), plus ``eagle_fc.npz`` = the fc split into ``we`` / ``wf`` (H, H) and ``bias``,
so the runtime computes ``e @ we + f @ wf + bias`` without torch. The IR also has a ``hidden_states``
output (the predicted feature, the head's input) that the next draft step reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import openvino as ov

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import LlavakitError, ModelLoadError
from llavakit.export import layout
from llavakit.export.draft import DRAFT_MARKER, head_subset, read_head_ids
from llavakit.runtime.eagle import EAGLE_FC, add_hidden_output

TRAINED_FC = "eagle_fc.safetensors"


def is_eagle_source(path: Path) -> bool:
    """A trained EAGLE draft directory (what ``train_eagle.py`` writes)."""
    return (Path(path) / TRAINED_FC).is_file()


def load_eagle_body(src: Path):
    """(LlamaModel body in fp32, fc weight (H, 2H), fc bias (H,)) from a trained EAGLE directory."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(src)
    body = AutoModel.from_config(config).float().eval()
    missing, unexpected = body.load_state_dict(load_file(str(src / "model.safetensors")), strict=False)
    missing = [k for k in missing if not k.startswith("embed_tokens.")]
    if missing or unexpected:
        raise ModelLoadError(f"{src}/model.safetensors does not fit its config: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
    body.embed_tokens = None  # rows come in as embeddings; the table would be dead weight
    fc = load_file(str(src / TRAINED_FC))
    weight, bias = fc["weight"].float(), fc["bias"].float()
    hidden = config.hidden_size
    if tuple(weight.shape) != (hidden, 2 * hidden) or tuple(bias.shape) != (hidden,):
        raise ModelLoadError(f"{src}/{TRAINED_FC}: fc weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do "
                             f"not fit hidden size {hidden} (expected ({hidden}, {2 * hidden}) / ({hidden},))")
    return body, weight, bias


def target_head(target: str | Path):
    """The target VLM's LM head (a Linear (V, H)) and its text config."""
    import torch
    from transformers import AutoModelForImageTextToText

    import llavakit.models.moe_llava  # noqa: F401  (registers "moe_llava")

    model = AutoModelForImageTextToText.from_pretrained(resolve_source(target, "target model"), dtype=torch.float32)
    return model.lm_head, model.config.get_text_config()


def export_eagle_draft(source: str | Path, target: str | Path, out: str | Path, weights: str = "int8",
                       force: bool = False, head_size: int | None = None, head_file: Path | None = None,
                       marker_extra: dict | None = None) -> Path:
    """Export the trained EAGLE draft at ``source`` for the VLM ``target`` into ``out``; returns ``out``.

    ``marker_extra``: more fields for the draft's marker (the shipped draft's ``num_draft_tokens``)."""
    import torch
    from transformers import AutoTokenizer

    from llavakit.export.compress import CompressionOptions, compress_language_model, save_as_fp16
    from llavakit.export.convert import convert_language_model

    out, src = Path(out), Path(source)
    if out.exists() and not force:
        raise LlavakitError(f"output directory {out} already exists; pass --force to replace it")
    if not is_eagle_source(src):
        raise ModelLoadError(f"{src} is not a trained EAGLE draft (no {TRAINED_FC}; scripts/gpu/train_eagle.py "
                             "writes one)")
    options = CompressionOptions(weights=weights)
    options.validate()
    start = time.perf_counter()
    with torch.no_grad():
        body, weight, bias = load_eagle_body(src)
        head, text_config = target_head(target)
        if head.weight.shape[1] != body.config.hidden_size:
            raise LlavakitError(f"the draft's hidden size {body.config.hidden_size} is not the target's "
                                f"{head.weight.shape[1]}: this EAGLE draft was trained for another model")
        head_ids = read_head_ids(src, head_size, head_file) if head_size else None
        if head_ids is not None:
            if max(head_ids) >= head.weight.shape[0]:
                raise LlavakitError(f"head ids must lie in [0, {head.weight.shape[0]}) for this target")
            head = head_subset(head, head_ids)  # (N, H): logits for the head ids only
        model = SimpleNamespace(config=body.config, model=SimpleNamespace(language_model=body), lm_head=head)
        hidden = body.config.hidden_size
        # a trained draft directory carries the tokenizer; the one shipped with llavakit does not (it is the
        # target's, the same SmolLM2 files again): then the target's is the draft's
        has_tokenizer = (src / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(src if has_tokenizer else resolve_source(target, "target model"))
        with atomic_directory(out) as tmp:
            language = add_hidden_output(compress_language_model(convert_language_model(model), options))
            ov.save_model(language, tmp / layout.LANGUAGE_MODEL, compress_to_fp16=save_as_fp16(options, "language"))
            np.savez(tmp / EAGLE_FC, we=weight[:, :hidden].T.numpy(), wf=weight[:, hidden:].T.numpy(),
                     bias=bias.numpy())  # x = e @ we + f @ wf + bias
            config = body.config.to_dict()
            config["vocab_size"] = int(text_config.vocab_size)
            (tmp / layout.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            tokenizer.save_pretrained(tmp)
            (tmp / DRAFT_MARKER).write_text(json.dumps({
                "kind": "eagle", "source": str(source), "target": str(target), "weights": weights,
                "vocab_size": int(text_config.vocab_size),
                **({"head_ids": head_ids} if head_ids is not None else {}), **(marker_extra or {}),
                "seconds": round(time.perf_counter() - start, 2)}, indent=2) + "\n")
    return out

"""Upcycling: a dense LLaVA (stage 2) → an untrained MoE-LLaVA that computes the same function.

MoE-LLaVA's stage 3 starts by copying each selected layer's FFN into every
expert. With the top-k weights renormalised to sum to 1, a token's output is
``sum_k w_k · FFN(x) = FFN(x)``: the upcycled model answers exactly like the
dense one (up to float rounding) until MoE-tuning makes the experts differ.

Design: the dense model is loaded once and its MLP modules are wrapped in place
(``MoEBlock`` deep-copies the module, so the expert weights are the dense
weights bit for bit); the wrapped modules are then moved into a MoE-LLaVA shell
created on the meta device, as ``build.py`` does — nothing is allocated twice
beyond the expert copies themselves. Routers start from a seeded
``N(0, initializer_range)``, like the reference's freshly created gate.
The output directory is written all-or-nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import BuildError
from llavakit.models.moe_block import MoEBlock
from llavakit.models.moe_llava import MoeLlavaConfig, MoeLlavaForConditionalGeneration


def parse_layers(spec: str) -> str | list[int]:
    """``--layers`` value: a mode name or comma-separated indices ("0,2,5")."""
    spec = spec.strip()
    if spec and all(part.strip().lstrip("-").isdigit() for part in spec.split(",")):
        return [int(part) for part in spec.split(",")]
    return spec


def upcycle_model(dense: LlavaForConditionalGeneration, num_experts: int = 4, top_k: int = 2,
                  layers: str | list[int] = "sparse", seed: int = 0, **moe: object
                  ) -> MoeLlavaForConditionalGeneration:
    """Turn a loaded dense LLaVA into a MoE-LLaVA (the dense model's modules are reused, not copied)."""
    block = {"num_experts": num_experts, "top_k_experts": top_k, **moe}
    if isinstance(layers, str):
        block["moe_mode"] = layers
    else:
        block["moe_layers_idx"] = list(layers)
    config_dict = dense.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        config_dict.pop(key, None)
    config = MoeLlavaConfig(**config_dict, moe=block)  # validates the moe block
    text = config.get_text_config()
    decoder = dense.model.language_model
    generator = torch.Generator().manual_seed(seed)
    for idx, experts in zip(config.moe["moe_layers_idx"], config.moe["num_experts"], strict=True):
        mlp = decoder.layers[idx].mlp
        moe_block = MoEBlock(mlp, text.hidden_size, experts, top_k, config.moe["capacity_factor"],
                             config.moe["min_capacity"])
        std = float(getattr(text, "initializer_range", 0.02))
        weight = torch.randn(moe_block.router.weight.shape, generator=generator) * std  # (E, C)
        with torch.no_grad():
            moe_block.router.weight.copy_(weight.to(moe_block.router.weight.dtype))
        decoder.layers[idx].mlp = moe_block.to(next(mlp.parameters()).dtype)
    with torch.device("meta"):
        model = MoeLlavaForConditionalGeneration(config)
    model.model = dense.model
    model.lm_head = dense.lm_head
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = dense.generation_config
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise BuildError(f"internal error: tensors left unfilled by upcycling: {on_meta[:5]}")
    return model.eval()


def upcycle(dense: str | Path, out: str | Path, num_experts: int = 4, top_k: int = 2,
            layers: str | list[int] = "sparse", seed: int = 0, force: bool = False) -> Path:
    """Write the MoE-LLaVA upcycled from the dense LLaVA directory ``dense`` to ``out``."""
    out = Path(out)
    if out.exists() and not force:
        raise BuildError(f"output directory {out} already exists; pass --force to replace it")
    source = resolve_source(dense, "dense LLaVA")
    model_type = json.loads((source / "config.json").read_text()).get("model_type")
    if model_type != "llava":
        raise BuildError(f"{source} holds a {model_type!r} model; upcycling needs a dense 'llava' checkpoint")
    model = LlavaForConditionalGeneration.from_pretrained(source, dtype="auto")
    moe_model = upcycle_model(model, num_experts, top_k, layers, seed)
    processor = AutoProcessor.from_pretrained(source)
    record = {"upcycled_by": "llavakit", "dense": str(dense), "num_experts": num_experts, "top_k": top_k,
              "moe_layers_idx": moe_model.config.moe["moe_layers_idx"], "seed": seed}
    with atomic_directory(out) as tmp:
        moe_model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "llavakit_upcycle.json").write_text(json.dumps(record, indent=2) + "\n")
    return out

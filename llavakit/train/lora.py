"""LoRA on the language model of a LLaVA, through PEFT.

Design decisions:

* **Targets are found, not named.** Every ``nn.Linear`` inside the language model
  is adapted (LLaVA-1.5's LoRA recipe adapts all LM linears), found by walking
  the module tree, so every LM family (q/k/v/o + gate/up/down, Phi's dense/fc1/fc2,
  ...) works without a per-family list. MoE routers are left out (they train in
  full, see ``moe_freeze``); the vision tower and the LM head are never adapted.
* **The projector trains in full** and is saved inside the adapter
  (PEFT ``modules_to_save``), so an adapter directory is self-contained on top of
  the base model it names; with MoE the routers are saved the same way.
* **An adapter can be continued** (``continue_lora``, ``llavakit train --adapter DIR``):
  the shipped budget adapter, say, trained further on new data. Its own rank,
  alpha and targets are kept (they are what the weights mean); the recipe's
  ``lora_r``/``lora_alpha`` are set from it so recipe.json and resume checks
  tell the truth. The base model must be the one the adapter was trained on.
* Output: the adapter directory (``adapter_config.json`` +
  ``adapter_model.safetensors`` + the processor, for runtime adapter switching),
  or, on request, the adapter merged into a plain HF LLaVA (``merge_and_unload``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llavakit.errors import LlavakitError


def lm_linear_targets(model: nn.Module) -> list[str]:
    """Full module names of the LM's linear layers (LoRA targets), routers and LM head excluded."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".language_model." not in f".{name}.":
            continue
        if name.endswith((".router", "lm_head")) or ".router." in name:
            continue
        names.append(name)
    if not names:
        raise LlavakitError("found no linear layers in the language model to put LoRA on")
    return names


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, moe: bool = False) -> nn.Module:
    """Wrap ``model`` with LoRA adapters on its LM linears; projector (and MoE routers) trainable in full."""
    from peft import LoraConfig, get_peft_model

    save = ["multi_modal_projector"] + (["router"] if moe else [])
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lm_linear_targets(model),
                        modules_to_save=save, bias="none")
    return get_peft_model(model, config)


def adapter_shape(adapter_dir: str | Path) -> tuple[int, int]:
    """(r, lora_alpha) of a LoRA adapter directory; a clear error if it is not one."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise LlavakitError(f"--adapter {adapter_dir} is not a LoRA adapter directory (no adapter_config.json); "
                            f"pass the adapter/ folder of a LoRA run, or a run kept with --keep-adapter")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise LlavakitError(f"--adapter {adapter_dir} holds a {config.get('peft_type')!r} adapter; "
                            f"llavakit continues LoRA adapters only")
    return int(config["r"]), int(config["lora_alpha"])


def continue_lora(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """``model`` with an existing LoRA adapter loaded trainable (its projector/routers copies too)."""
    from peft import PeftModel

    adapter_shape(adapter_dir)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as exc:  # targets or shapes that are not this model's
        raise LlavakitError(f"--adapter {adapter_dir} does not fit --model (was it trained on another base "
                            f"model?): {exc}") from exc


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain transformers model with the adapters folded into the weights."""
    return model.merge_and_unload()


def load_adapter(base_dir: str | Path, adapter_dir: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Base LLaVA + a llavakit LoRA adapter directory, as a PEFT model (``merge_lora`` to fold it in)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    import llavakit.models.moe_llava  # noqa: F401  (registers moe_llava with the Auto classes)

    base = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir))

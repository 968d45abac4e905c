"""Which parts of a LLaVA train in which stage (requires_grad on the three parts).

A LLaVA has three parts, found by the names transformers gives them
(``model.vision_tower``, ``model.multi_modal_projector``, ``model.language_model``
plus the ``lm_head``); MoE-LLaVA keeps the same names. Design decisions:

* Freezing is by part, decided by the recipe's ``train_vision`` / ``train_projector``
  / ``train_lm`` flags (align: projector only; instruct: projector + LM), and every
  parameter must belong to exactly one part: an unknown parameter is an error,
  never silently trained or frozen.
* Frozen parts stay in train mode like the rest (the Trainer calls ``model.train()``):
  the CLIP/SigLIP towers and LLaVA LMs have no dropout by default, so a frozen
  part is a fixed function either way.
* With LoRA the LM's base weights stay frozen and PEFT adds trainable adapters
  (see ``lora.py``); the projector stays fully trainable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llavakit.errors import LlavakitError

PARTS = ("vision", "projector", "lm")


@dataclass(frozen=True)
class FreezeReport:
    """Parameter counts per part and how many of them train."""

    total: dict[str, int]
    trainable: dict[str, int]

    def summary(self) -> str:
        cells = [f"{p} {self.trainable[p]:,}/{self.total[p]:,}" for p in PARTS]
        return "trainable params: " + ", ".join(cells)


def part_of(name: str) -> str:
    """The part a parameter name belongs to ("vision", "projector" or "lm")."""
    if ".vision_tower." in f".{name}":
        return "vision"
    if ".multi_modal_projector." in f".{name}":
        return "projector"
    if ".language_model." in f".{name}" or name.startswith("lm_head.") or ".lm_head." in name:
        return "lm"
    raise LlavakitError(f"parameter {name!r} belongs to no known LLaVA part {PARTS}; is this a LLaVA model?")


def apply_freezing(model: torch.nn.Module, train_vision: bool, train_projector: bool, train_lm: bool) -> FreezeReport:
    """Set ``requires_grad`` per part and return the counts."""
    wanted = {"vision": train_vision, "projector": train_projector, "lm": train_lm}
    total = dict.fromkeys(PARTS, 0)
    trainable = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        part = part_of(name)
        param.requires_grad_(wanted[part])
        total[part] += param.numel()
        trainable[part] += param.numel() if wanted[part] else 0
    return FreezeReport(total, trainable)


def count_trainable(model: torch.nn.Module) -> FreezeReport:
    """Counts per part as the model stands (e.g. after PEFT added adapters)."""
    total = dict.fromkeys(PARTS, 0)
    trainable = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        part = part_of(name)
        total[part] += param.numel()
        trainable[part] += param.numel() if param.requires_grad else 0
    return FreezeReport(total, trainable)

"""Gradient clipping folded into fused AdamW: the clip's second pass over every gradient disappears.

Why: the Trainer clips with ``clip_grad_norm_``, which reads every gradient once for the total norm and then
reads and writes every gradient again (``_foreach_mul_`` by ``max_norm / norm``). On the bench-1b shape that
second pass is 3.2 ms of an ~86 ms H100 step (``benchmarks/training-speed.md``, profile). torch's fused
Adam/AdamW already divides each gradient by ``grad_scale`` inside its one kernel (the hook ``GradScaler`` uses to
unscale fp16 gradients), so setting

    grad_scale = max((norm + 1e-6) / max_norm, 1)          # a 0-dim tensor on the gradients' device

before ``optimizer.step()`` applies the same clipped update without the extra pass and without a host sync.

When: only where this is exactly what ``clip_grad_norm_`` would have done — a torch ``Adam``/``AdamW`` built with
``fused=True`` (transformers' default ``adamw_torch_fused`` from torch 2.8), no fp16 ``GradScaler`` (it owns
``grad_scale``), and gradients that are plain tensors (one process, or DDP, whose all-reduce already made them
equal on every rank). FSDP, DeepSpeed, XLA and DTensor gradients keep the Trainer's own clipping.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger("llavakit.train")

#: ``torch.nn.utils.clip_grad_norm_``'s guard against a zero norm, kept so the two paths clip alike.
EPS = 1e-6


def fused_optimizer(trainer: Any, model: torch.nn.Module) -> torch.optim.Optimizer | None:
    """The trainer's torch optimizer if clipping can be folded into it (module docstring), else None."""
    from accelerate.utils import DistributedType

    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps the torch optimizer
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    if not all(group.get("fused") for group in inner.param_groups):
        return None
    accelerator = trainer.accelerator
    if getattr(accelerator, "scaler", None) is not None:
        return None
    if accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        return None
    mixed_mesh = getattr(trainer, "_has_mixed_mesh_grads", None)  # DTensor gradients (tensor / expert parallel)
    if mixed_mesh is not None and mixed_mesh(model):
        return None
    return inner


def clip_into(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
              max_norm: float) -> torch.Tensor:
    """Set ``optimizer.grad_scale`` so its next fused step clips to ``max_norm``; returns the pre-clip norm."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)  # () on the first gradient's device
    # (): fused Adam divides by it; float32 whatever the gradients' dtype (the kernels read it as float)
    optimizer.grad_scale = torch.clamp((norm.float() + EPS) / max_norm, min=1.0)
    return norm


def announce_once(trainer: Any) -> None:
    """Say once per trainer that the fold is in use (the training log shows which clipping ran)."""
    if not getattr(trainer, "_fused_clip_announced", False):
        trainer._fused_clip_announced = True
        log.info("gradient clipping folded into the fused optimizer step (grad_scale; no separate rescale pass)")

"""A training step without host-device syncs, so the CPU queues step N+1 while the GPU still runs step N.

Why: on the bench-1b shape an H100 step is about 71 ms of kernels, and the CPU needs about 45 ms to launch them
(Inductor's wrappers, ~470 matmul dispatches: ``benchmarks/training-speed.md``). That launch time is free only
when the CPU may run ahead of the GPU. Every sync inside the step makes the GPU wait for the CPU instead. After
``LlavakitTrainer._track_num_input_tokens`` (its ``.item()``) and ``compile_ready`` (the ``<image>`` check's
``.item()``), transformers' Trainer (5.17 to 5.23) still syncs twice a step:

1. **The loss filter** (``logging_nan_inf_filter``, on by default): ``torch.isnan(loss) or torch.isinf(loss)`` is
   the Python truth of a CUDA tensor, read right after the backward is queued. The CPU waits for the whole
   forward and backward, then launches the clip, the optimizer and the next forward while the GPU idles.
   llavakit applies the same rule on the device (:func:`finite_or_running_mean`: a non-finite step loss counts
   as the mean of the losses since the last log, exactly what transformers adds) and turns transformers' check
   off while training. Evaluation keeps transformers' filter (there it drops non-finite eval losses).
2. **The batch copy**: accelerate copies each batch to the GPU with ``non_blocking=False``. From pinned memory
   that is a copy followed by a stream sync, so the next step cannot start before the last one ends.
   :func:`accelerator_config` asks for ``non_blocking`` wherever batches are pinned (CUDA); the caching host
   allocator keeps each pinned batch alive until its copy is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def accelerator_config(pin_memory: bool) -> dict[str, Any]:
    """``TrainingArguments(accelerator_config=...)``: asynchronous batch copies where batches are pinned."""
    return {"non_blocking": True} if pin_memory else {}


def finite_or_running_mean(loss: torch.Tensor, running: torch.Tensor, steps_since_log: int) -> torch.Tensor:
    """The step loss, or where it is NaN/inf the running loss's mean since the last log (transformers' rule).

    transformers adds ``running / (1 + steps_since_log)`` to the running loss in place of a non-finite step
    loss; returning that value for the Trainer to add gives the same sum, decided on the device.
    """
    fallback = running.detach() / (1 + steps_since_log)  # () same device as the loss
    return torch.where(torch.isfinite(loss), loss, fallback.to(loss.dtype))


@contextmanager
def device_loss_filter(trainer: Any) -> Iterator[bool]:
    """While training, transformers' host-side loss filter off; yields whether llavakit must filter instead."""
    args = trainer.args
    own = bool(args.logging_nan_inf_filter)
    args.logging_nan_inf_filter = False
    try:
        yield own
    finally:
        args.logging_nan_inf_filter = own


@contextmanager
def host_loss_filter(trainer: Any, own: bool) -> Iterator[None]:
    """During an evaluation inside training: transformers' filter back on if the user had it on."""
    args = trainer.args
    saved = args.logging_nan_inf_filter
    args.logging_nan_inf_filter = own or saved
    try:
        yield
    finally:
        args.logging_nan_inf_filter = saved

"""Make a transformers LLaVA forward trace as one graph under ``torch.compile`` while training.

Why: ``train_bench --profile`` showed a bench-1b step spending a fifth of its time with the GPU idle,
and Dynamo reporting graph breaks in transformers (``utils/output_capturing.py``, ``import_utils.py``).
Two things in transformers' LLaVA forward cause them:

* ``get_placeholder_mask`` checks that the ``<image>`` token count equals the image features
  (``torch_compilable_check``). Under Dynamo that is ``Tensor.item()``: a graph break, and a
  host-device synchronisation in the middle of every forward, which also makes CUDA-graph capture
  (``torch_compile_mode="reduce-overhead"``) fail. llavakit's data layer checks every sample's
  ``<image>`` tags against its images before training starts (``llavakit.data``), so the check is
  redundant here; transformers' own switch ``TRANSFORMERS_DISABLE_TORCH_CHECK=1`` turns it off, and
  ``compile_ready`` sets it for the duration of training only.
* The output-capturing hooks (the vision tower's hidden states, which LLaVA selects a layer from) are
  installed lazily under a ``threading.Lock`` on the first forward; Dynamo cannot enter a lock, breaks,
  and recompiles once the hooks exist. Installing them before the first forward avoids both.
* The image features are merged into the token embeddings with ``masked_scatter``, whose backward
  (``masked_select``: an output size read from the data) cannot be captured in a CUDA graph. While
  training, a forward pre-hook on the LLaVA model does the merge itself with fixed-shape ops (a
  cumulative-sum index, a gather and a ``where``) and hands the model ``inputs_embeds``; the values
  and gradients are the same (``tests/test_compile_ready.py``). Only plain LLaVA (and MoE-LLaVA, its
  subclass) is merged this way; LLaVA-NeXT's AnyRes features keep transformers' path. A wrapper that
  calls ``forward`` directly (PEFT) skips the hook, which only loses the speed-up.

Measured on transformers 5.17 and 5.23 (tiny LLaVA, ``torch._dynamo.explain`` after warm-up): 3 graph
breaks before, 0 after. ``tests/test_compile_ready.py`` checks it on the installed version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

CHECK_SWITCH = "TRANSFORMERS_DISABLE_TORCH_CHECK"


def install_capture_hooks(model: torch.nn.Module) -> int:
    """Install transformers' output-capturing hooks on every sub-model that records outputs; how many.

    A no-op (0) on transformers versions without ``utils.output_capturing``.
    """
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return 0
    installed = 0
    for module in model.modules():  # the class attribute names what a sub-model can record (5.17 and 5.23)
        if getattr(module, "_can_record_outputs", None):
            maybe_install_capturing_hooks(module)
            installed += int(bool(getattr(module, "_output_capturing_hooks_installed", False)))
    return installed


def merge_image_features(model: torch.nn.Module, vision: torch.nn.Module, input_ids: torch.Tensor,
                         pixel_values: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the projected image features at the ``<image>`` positions, in order.

    ``vision`` is the model's ``export.parts.VisionEmbeddings`` (tower, feature layer, projector). The
    same values as transformers' ``masked_scatter`` merge (features fill the image positions row-major),
    from ops whose shapes do not depend on the data.
    """
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, D)
    feats = vision(pixel_values)  # (N, P, D)
    flat = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)  # (N*P, D)
    mask = input_ids == model.config.image_token_id  # (B, T)
    index = (mask.reshape(-1).cumsum(0) - 1).clamp(min=0)  # (B*T,): the feature row each image position takes
    picked = flat[index].view_as(embeds)  # (B, T, D)
    return torch.where(mask.unsqueeze(-1), picked, embeds)  # (B, T, D)


def _merge_hook(vision: torch.nn.Module, module: torch.nn.Module, args: tuple, kwargs: dict
                ) -> tuple[tuple, dict] | None:
    """Forward pre-hook: ``input_ids`` + ``pixel_values`` become ``inputs_embeds``."""
    if args or kwargs.get("pixel_values") is None or kwargs.get("input_ids") is None:
        return None
    if kwargs.get("past_key_values") is not None or kwargs.get("image_sizes") is not None:
        return None
    kwargs = dict(kwargs)
    kwargs["inputs_embeds"] = merge_image_features(module, vision, kwargs.pop("input_ids"), kwargs.pop("pixel_values"))
    return args, kwargs


def install_merge_hook(model: torch.nn.Module) -> list[Any]:
    """The merge pre-hook on every plain LLaVA module inside ``model``; the handles (remove them after).

    The vision wrapper is built here, once per module, not on every forward.
    """
    from transformers import LlavaForConditionalGeneration

    from llavakit.export.parts import VisionEmbeddings

    return [m.register_forward_pre_hook(partial(_merge_hook, VisionEmbeddings(m)), with_kwargs=True)
            for m in model.modules() if isinstance(m, LlavaForConditionalGeneration)]


@contextmanager
def compile_ready(model: torch.nn.Module) -> Iterator[None]:
    """While inside: capture hooks installed, image merge without ``masked_scatter``, transformers'
    data-dependent checks off (all restored after)."""
    install_capture_hooks(model)
    handles = install_merge_hook(model)
    before = os.environ.get(CHECK_SWITCH)
    os.environ[CHECK_SWITCH] = "1"
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if before is None:
            os.environ.pop(CHECK_SWITCH, None)
        else:
            os.environ[CHECK_SWITCH] = before

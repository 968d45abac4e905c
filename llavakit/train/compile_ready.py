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

Measured on transformers 5.17 and 5.23 (tiny LLaVA, ``torch._dynamo.explain`` after warm-up): 3 graph
breaks before, 0 after. ``tests/test_compile_ready.py`` checks it on the installed version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CHECK_SWITCH = "TRANSFORMERS_DISABLE_TORCH_CHECK"


def install_capture_hooks(model: torch.nn.Module) -> int:
    """Install transformers' output-capturing hooks on every sub-model that records outputs; how many.

    A no-op (0) on transformers versions without ``utils.output_capturing``.
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY, maybe_install_capturing_hooks
    except ImportError:
        return 0
    installed = 0
    for module in model.modules():
        if getattr(module, "_can_record_outputs", None) and _CAN_RECORD_REGISTRY.get(module):
            maybe_install_capturing_hooks(module)
            installed += 1
    return installed


@contextmanager
def compile_ready(model: torch.nn.Module) -> Iterator[None]:
    """While inside: hooks installed and transformers' data-dependent checks off (restored after)."""
    install_capture_hooks(model)
    before = os.environ.get(CHECK_SWITCH)
    os.environ[CHECK_SWITCH] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CHECK_SWITCH, None)
        else:
            os.environ[CHECK_SWITCH] = before

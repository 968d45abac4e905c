"""LoRA slots at export: one compiled model, any number of PEFT adapters chosen per request.

``llavakit export MODEL --out DIR --lora-slots`` adds to every LoRA target ``Linear``
``y = x W^T + b`` a low-rank branch whose factors are *model inputs*::

    y = x W^T + b + (x @ A^T) @ B^T        A: (r, in), B: (out, r), r dynamic

Design decisions (the runtime half is ``runtime/lora.py``):

* **Inputs, not state variables, not merged weights.** The runtime sets the A/B
  tensors once on the infer request when the adapter changes (``set_tensor``, no copy
  per token) and they stay there for every decode step. State variables would be
  wiped by ``reset_state()``, which the KV-cache reuse calls; merging would mean a
  recompile or a weight rewrite per switch.
* **The rank is a dynamic dimension.** Rank 0 (A: (0, in), B: (out, 0)) makes the
  branch an exact ``+ 0``, so no adapter gives the base model's logits bit for bit.
  A mix of adapters is their factors concatenated along the rank, each weight and
  ``lora_alpha / r`` folded into its B rows — one branch per Linear whatever the mix.
* **Targets** are the LM linears ``llavakit train --lora`` adapts (``train/lora.lm_linear_targets``:
  q/k/v/o/gate/up/down or the family's names), optionally narrowed with
  ``--lora-targets q_proj,v_proj``. Each branch costs per node, not per FLOP
  (``benchmarks/lora.md``, bench-1b): q/v slots decode within noise of a plain export,
  slots on all 154 projections ~8 % slower empty and ~16 % with a rank-16 adapter — so
  export slots only where the adapters you serve put LoRA.
* **The projector** trains in full in a llavakit adapter (PEFT ``modules_to_save``).
  Its Linears in the vision IR get the same branch plus a bias-delta input
  ``d`` (out,), and the runtime writes a full-weight change as an exact factorisation
  ``A = I, B = W' - W``; no adapter = rank 0 and ``d = 0``, again an exact ``+ 0``.
* Hooks on the real transformers modules add the branch while tracing, so the IR
  is still the transformers computation, not a re-implementation.
* The slots are listed in ``llavakit_lora.json`` (module name → in/out features,
  input names): the runtime checks an adapter against it and names what does not fit.
* Opt-in: extra inputs make the IR something ``openvino_genai.VLMPipeline`` does not
  feed, so a plain export stays GenAI-loadable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from torch import nn

from llavakit.errors import LlavakitError

MANIFEST = "llavakit_lora.json"
BASE_WEIGHTS = "llavakit_lora_base.safetensors"  # the projector as exported (fp32)
EXAMPLE_RANK = 2  # trace with a non-zero rank so nothing specialises on an empty branch


@dataclass
class Slot:
    """One adapted Linear: its module name in the LLaVA and its features."""

    module: str
    in_features: int
    out_features: int
    bias: bool = False  # also a bias-delta input (projector slots)

    @property
    def inputs(self) -> list[str]:
        names = [f"lora.A.{self.module}", f"lora.B.{self.module}"]
        return names + ([f"lora.bias.{self.module}"] if self.bias else [])


@dataclass
class LoraSlots:
    """The Linears of one part that get a LoRA branch, and the hooks that add it while tracing."""

    modules: dict[str, nn.Linear]
    bias: bool = False
    _current: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    @property
    def slots(self) -> list[Slot]:
        return [Slot(name, m.in_features, m.out_features, self.bias) for name, m in self.modules.items()]

    def input_names(self) -> list[str]:
        return [n for slot in self.slots for n in slot.inputs]

    def examples(self) -> tuple[list[torch.Tensor], list[ov.PartialShape]]:
        """Example tensors (rank ``EXAMPLE_RANK``) and their dynamic-rank shapes, in input order."""
        tensors, shapes = [], []
        for slot in self.slots:
            tensors += [torch.randn(EXAMPLE_RANK, slot.in_features) * 0.01,  # A (r, in)
                        torch.randn(slot.out_features, EXAMPLE_RANK) * 0.01]  # B (out, r)
            shapes += [ov.PartialShape([-1, slot.in_features]), ov.PartialShape([slot.out_features, -1])]
            if slot.bias:
                tensors.append(torch.zeros(slot.out_features))  # d (out,)
                shapes.append(ov.PartialShape([slot.out_features]))
        return tensors, shapes

    @contextmanager
    def hooked(self) -> Iterator[None]:
        """Forward hooks adding ``(x @ A^T) @ B^T (+ d)`` to each target while tracing."""

        def hook_for(name: str):
            def hook(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
                a, b, *bias = self._current[name]
                low = torch.matmul(args[0], a.t())  # (..., r)
                out = out + torch.matmul(low, b.t())  # (..., out)
                return out + bias[0] if bias else out

            return hook

        handles = [m.register_forward_hook(hook_for(name)) for name, m in self.modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class WithLoraInputs(nn.Module):
    """``part`` with the LoRA factors as trailing forward arguments (after its own ``n_own`` ones)."""

    def __init__(self, part: nn.Module, slots: LoraSlots, n_own: int) -> None:
        super().__init__()
        self.part, self.slots, self.n_own = part, slots, n_own

    def forward(self, *args: torch.Tensor):
        own, factors = args[: self.n_own], list(args[self.n_own:])
        for slot in self.slots.slots:
            count = 3 if slot.bias else 2
            self.slots._current[slot.module] = tuple(factors[:count])
            factors = factors[count:]
        return self.part(*own)


def lm_slots(model: nn.Module, only: Sequence[str] | None = None) -> LoraSlots:
    """The LM Linears ``llavakit train --lora`` targets, narrowed to names ending in one of ``only``."""
    from llavakit.train.lora import lm_linear_targets

    names = lm_linear_targets(model)
    if only:
        wanted = tuple(o.strip() for o in only if o.strip())
        picked = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
        if not picked:
            found = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise LlavakitError(f"--lora-targets {list(wanted)} match no language-model Linear; "
                                f"this model's are {found}")
        names = picked
    modules = dict(model.named_modules())
    return LoraSlots({n: modules[n] for n in names})


def projector_slots(model: nn.Module) -> LoraSlots:
    """The projector's Linears (a llavakit adapter carries a fully trained projector)."""
    prefix = "model.multi_modal_projector."
    found = {n: m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)}
    return LoraSlots(found, bias=True)


def write_manifest(out: Path, lm: LoraSlots, projector: LoraSlots | None) -> None:
    """``llavakit_lora.json``: which modules have slots, their sizes and input names."""
    body = {
        "format": 1,
        "language_model": [vars(s) for s in lm.slots],
        "vision_embeddings": [vars(s) for s in projector.slots] if projector else [],
    }
    (out / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")
    if projector and projector.modules:  # the runtime turns a fully trained projector into a delta from these
        from safetensors.torch import save_file

        weights = {f"{name}.{kind}": t.detach().float().contiguous() for name, m in projector.modules.items()
                   for kind, t in (("weight", m.weight), ("bias", m.bias)) if t is not None}
        save_file(weights, str(out / BASE_WEIGHTS))


def empty_factors(slots: LoraSlots) -> dict[str, np.ndarray]:
    """Rank-0 factors (and zero bias deltas) for every slot: the inputs that mean "no adapter"."""
    out = {}
    for slot in slots.slots:
        out[f"lora.A.{slot.module}"] = np.zeros((0, slot.in_features), np.float32)  # (0, in)
        out[f"lora.B.{slot.module}"] = np.zeros((slot.out_features, 0), np.float32)  # (out, 0)
        if slot.bias:
            out[f"lora.bias.{slot.module}"] = np.zeros((slot.out_features,), np.float32)  # (out,)
    return out

"""Expert-usage statistics for MoE-LLaVA on the OpenVINO engine: how often each expert of each layer fired.

The torch model counts assignments inside its ``MoEBlock``; an exported IR has
no Python to count with, so the engine reads the router's choices out of the
graph instead.

Design decisions:
- **Added when the engine loads the IR, not written into the export.** Each
  MoE block traces to one stable ``TopK`` over the ``E`` router probabilities
  (``moe_block.route``'s sort), named after its module
  (``…layers.{i}.mlp/aten::sort/TopK``). The engine slices the first ``k``
  indices of that TopK — exactly the experts the block dispatches to — and adds
  the slice as an extra output ``moe_experts.{i}`` (N, k) of the compiled model.
  The files on disk stay the dense/GenAI layout byte for byte (a GenAI or
  optimum consumer sees no new output), exports made before this existed get
  statistics too, and the added output only copies ``N·k`` integers per step.
- **Only for ``model_type: moe_llava``**: dense models get nothing added.
- **Counts are per generation**: the engine resets them at prefill. With
  KV-prefix reuse only the positions actually computed are counted (a cached
  prefix routed no token this time), which is what "fired in this generation"
  means; a from-scratch prefill counts what the torch model counts.
- If the IR does not show one TopK per MoE layer named in the config (an IR
  not written by our exporter), there are no statistics (``None``) rather
  than wrong ones; generation itself is untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

_TOPK_NAME = re.compile(r"layers\.(\d+)\.mlp/aten::sort/TopK")
OUTPUT_PREFIX = "moe_experts."


class ExpertUsage:
    """Assignments per expert and MoE layer, counted from the ``moe_experts.{i}`` outputs after each infer."""

    def __init__(self, num_experts: dict[int, int]) -> None:
        self.num_experts = num_experts  # MoE layer index → its number of experts
        self.reset()

    @classmethod
    def attach(cls, model: ov.Model, model_dir: Path) -> ExpertUsage | None:
        """Add the router outputs to ``model`` (before compiling) for a MoE export; None for anything else."""
        config = json.loads((Path(model_dir) / "config.json").read_text())
        moe = config.get("moe") if config.get("model_type") == "moe_llava" else None
        if not moe:
            return None
        layers, experts, k = moe["moe_layers_idx"], moe["num_experts"], int(moe["top_k_experts"])
        found = {}
        for op in model.get_ordered_ops():
            match = _TOPK_NAME.search(op.get_friendly_name()) if op.get_type_name() == "TopK" else None
            if match:
                found[int(match.group(1))] = op
        if sorted(found) != sorted(layers):
            return None
        results = []
        for layer, topk in found.items():
            chosen = ops.slice(topk.output(1), np.array([0]), np.array([k]), np.array([1]), np.array([1]))  # (N, k)
            chosen.output(0).get_tensor().set_names({f"{OUTPUT_PREFIX}{layer}"})
            results.append(ops.result(chosen))
        model.add_results(results)
        return cls(dict(zip(layers, experts, strict=True)))

    def reset(self) -> None:
        """Zero the counters (the engine calls this at every prefill: one generation's statistics)."""
        self._counts = {layer: np.zeros(n, dtype=np.int64) for layer, n in self.num_experts.items()}  # (E,) each

    def collect(self, request: ov.InferRequest) -> None:
        """Add the experts chosen in the infer that just ran (every computed position, top-k each)."""
        for layer, counts in self._counts.items():
            chosen = request.get_tensor(f"{OUTPUT_PREFIX}{layer}").data  # (N, k) expert indices
            counts += np.bincount(chosen.reshape(-1), minlength=counts.shape[0])[: counts.shape[0]]

    def counts(self) -> dict[int, list[int]]:
        """Layer → assignments per expert since the last reset (each position counts top-k times)."""
        return {layer: [int(c) for c in counts] for layer, counts in self._counts.items()}

    def fresh(self) -> ExpertUsage:
        """Zeroed counters for the same layers (a forked engine counts its own generations)."""
        return ExpertUsage(dict(self.num_experts))

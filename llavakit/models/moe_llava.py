"""MoE-LLaVA as a transformers model: LLaVA whose LM has sparse MoE layers.

    import llavakit.models.moe_llava  # registers "moe_llava" with the Auto classes
    model = AutoModelForImageTextToText.from_pretrained("moe-llava-dir")

Design decisions:
- **Composition over a fork.** ``MoeLlavaForConditionalGeneration`` is
  transformers' ``LlavaForConditionalGeneration`` whose selected decoder layers
  get their ``mlp`` replaced by a :class:`~llavakit.models.moe_block.MoEBlock`
  wrapping copies of that very MLP. Attention, caches, vision tower, projector,
  generation and loading are transformers' own; the checkpoint is a plain HF
  directory (``model_type: "moe_llava"``) whose weights are LLaVA's plus
  ``model.language_model.layers.{i}.mlp.router.weight`` and
  ``...mlp.experts.{j}.<the MLP's own names>``.
- **The config's ``moe`` block uses the reference's keys** (PKU-YuanGroup/MoE-LLaVA:
  moe_enable, moe_mode, moe_layers_idx, ep_size, num_experts (one per MoE
  layer), top_k_experts, capacity_factor, eval_capacity_factor, min_capacity,
  use_residual, router_aux_loss_coef, train_modules), so released configs
  translate key for key. ``eval_capacity_factor`` is kept for the record but
  inference never drops tokens (see ``moe_block``). ``use_residual``
  (PR-MoE) is refused: no released MoE-LLaVA uses it.
- **The load-balancing loss** of every MoE layer is summed, scaled by
  ``router_aux_loss_coef`` and added to the LM loss whenever ``labels`` are
  given, so any trainer that minimises ``outputs.loss`` trains the router
  correctly; ``outputs.aux_loss`` holds the unscaled sum for logging.
- Registration happens on import of this module; llavakit's loaders (torch
  backend, exporter, converters) import it before calling ``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

from llavakit.errors import LlavakitError
from llavakit.models.moe_block import MoEBlock

MODEL_TYPE = "moe_llava"
MOE_MODES = ("sparse", "first_half", "second_half", "dense")

#: The reference's ``moe`` block and its defaults (released models: 4 experts, top-2, sparse).
MOE_DEFAULTS: dict = {
    "moe_enable": True,
    "moe_mode": "sparse",
    "moe_layers_idx": None,
    "ep_size": 1,
    "num_experts": 4,
    "top_k_experts": 2,
    "capacity_factor": 1.5,
    "eval_capacity_factor": 2.0,
    "min_capacity": 0,
    "use_residual": False,
    "router_aux_loss_coef": 0.01,
    "train_modules": [],
}


class MoEError(LlavakitError):
    """A MoE setting (layers, experts, top-k, ...) that cannot describe a MoE-LLaVA."""


def moe_layer_indices(layers: str | list[int], num_layers: int) -> list[int]:
    """Decoder layers that get MoE: a mode name (the reference's four) or explicit indices."""
    if isinstance(layers, str):
        if layers == "sparse":
            return list(range(0, num_layers, 2))
        if layers == "first_half":
            return list(range(num_layers // 2))
        if layers == "second_half":
            return list(range(num_layers // 2, num_layers))
        if layers == "dense":
            return list(range(num_layers))
        raise MoEError(f"unknown MoE layer mode {layers!r}; choose one of {MOE_MODES} or a list of layer indices")
    indices = sorted({int(i) for i in layers})
    if not indices or indices[0] < 0 or indices[-1] >= num_layers:
        raise MoEError(f"MoE layer indices {list(layers)} must be non-empty and within 0..{num_layers - 1}")
    return indices


def normalize_moe(moe: dict | None, num_layers: int) -> dict:
    """Fill defaults, resolve the layer list and one expert count per MoE layer; refuse nonsense."""
    unknown = sorted(set(moe or {}) - set(MOE_DEFAULTS))
    if unknown:
        raise MoEError(f"unknown key(s) {unknown} in the config's moe block; known: {sorted(MOE_DEFAULTS)}")
    out = {**MOE_DEFAULTS, **(moe or {})}
    explicit = out["moe_layers_idx"]
    out["moe_layers_idx"] = moe_layer_indices(explicit if explicit is not None else out["moe_mode"], num_layers)
    if explicit is not None and out["moe_mode"] in MOE_MODES and out["moe_layers_idx"] != moe_layer_indices(
            out["moe_mode"], num_layers):
        out["moe_mode"] = "custom"  # what the reference writes for an explicit list
    n = len(out["moe_layers_idx"])
    experts = out["num_experts"]
    experts = [int(experts)] * n if isinstance(experts, int) else [int(e) for e in experts]
    if len(experts) == 1 and n > 1:
        experts = experts * n
    if len(experts) != n:
        raise MoEError(f"num_experts has {len(experts)} entries but there are {n} MoE layers")
    out["num_experts"] = experts
    k = int(out["top_k_experts"])
    if any(not 1 <= k <= e for e in experts):
        raise MoEError(f"top_k_experts={k} must be between 1 and the number of experts {experts}")
    if out["use_residual"]:
        raise MoEError("use_residual=True (residual PR-MoE) is not supported; released MoE-LLaVA models use False")
    if int(out["ep_size"]) != 1:
        out["ep_size"] = 1  # expert parallelism is a launch-time choice, not a model property
    return out


class MoeLlavaConfig(LlavaConfig):
    """A LlavaConfig plus the ``moe`` block (reference keys, normalised)."""

    model_type = MODEL_TYPE
    moe: dict | None = None
    lm_head_bias: bool = False  # Phi-2's LM head has a bias, which LLaVA's bias-free head would lose

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.moe = normalize_moe(self.moe, self.text_config.num_hidden_layers)


@dataclass
class MoeLlavaCausalLMOutputWithPast(LlavaCausalLMOutputWithPast):
    """LLaVA's output plus ``aux_loss``: the sum of the MoE layers' load-balancing losses (unscaled)."""

    aux_loss: torch.Tensor | None = None


class MoeLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with MoE blocks in the layers the config's ``moe`` block names."""

    config_class = MoeLlavaConfig

    def __init__(self, config: MoeLlavaConfig) -> None:
        super().__init__(config)
        if config.lm_head_bias:
            self.lm_head = torch.nn.Linear(self.lm_head.in_features, self.lm_head.out_features, bias=True)
        moe = config.moe
        text = config.get_text_config()
        layers = self.model.language_model.layers
        for idx, experts in zip(moe["moe_layers_idx"], moe["num_experts"], strict=True):
            layers[idx].mlp = MoEBlock(layers[idx].mlp, text.hidden_size, experts, moe["top_k_experts"],
                                       moe["capacity_factor"], moe["min_capacity"])
        self.post_init()

    def moe_blocks(self) -> dict[int, MoEBlock]:
        """Decoder layer index → its MoE block."""
        return {i: layer.mlp for i, layer in enumerate(self.model.language_model.layers)
                if isinstance(layer.mlp, MoEBlock)}

    def track_expert_usage(self, on: bool = True) -> None:
        """Start (and zero) or stop counting expert assignments."""
        for block in self.moe_blocks().values():
            block.track_usage = on
            block.reset_usage()

    def expert_usage(self) -> dict[int, list[int]]:
        """Layer → assignments per expert counted since the last reset (each token counts top-k times)."""
        return {i: block.usage.tolist() for i, block in self.moe_blocks().items()}

    def forward(self, *args, **kwargs) -> MoeLlavaCausalLMOutputWithPast:
        out = super().forward(*args, **kwargs)
        losses = [b.aux_loss for b in self.moe_blocks().values() if b.aux_loss is not None]
        aux = torch.stack(losses).sum() if losses else None
        loss = out.loss
        if loss is not None and aux is not None:
            loss = loss + self.config.moe["router_aux_loss_coef"] * aux.to(loss.dtype)
        fields = {k: v for k, v in out.items() if k != "loss"}
        return MoeLlavaCausalLMOutputWithPast(loss=loss, aux_loss=aux, **fields)


def register() -> None:
    """Make ``model_type: "moe_llava"`` loadable through the Auto classes (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, MoeLlavaConfig)
    except ValueError:
        return  # already registered
    AutoModelForImageTextToText.register(MoeLlavaConfig, MoeLlavaForConditionalGeneration)
    AutoProcessor.register(MoeLlavaConfig, LlavaProcessor)


register()

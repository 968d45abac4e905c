"""Stage 3 "MoE-tuning": which parameters train.

The model's own forward already adds ``router_aux_loss_coef`` × the summed
load-balancing losses to ``outputs.loss`` when labels are given, and drops
overflow tokens at the configured capacity in ``train()`` mode, so a trainer
needs nothing MoE-specific beyond calling :func:`prepare_moe_tuning`.

What trains, checked against PKU-YuanGroup/MoE-LLaVA's ``train.py``: the
reference freezes everything whose name does not contain one of its
``train_modules`` (the FFN projection names and the router ``wg``), then
re-enables the projector (``initialize_vision_modules`` sets it trainable
again). Because its match is by name, the FFNs of the *non*-MoE layers also
train there. llavakit's default trains exactly the experts, the routers and the
projector — the rule the MoE-LLaVA paper states — and
``train_dense_ffn=True`` reproduces the reference's wider set.

With LoRA (PEFT) adapters present, only the adapters inside the experts (and
dense FFNs if asked) train, plus the routers and projector in full, which is
the reference's LoRA MoE recipe without its name heuristics.
"""

from __future__ import annotations

from torch import nn

from llavakit.models.moe_block import MoEBlock


def _moe_and_dense_ffn_prefixes(model: nn.Module) -> tuple[list[str], list[str], list[str], list[str]]:
    """Module-name prefixes of experts, routers, projectors and non-MoE FFNs anywhere in ``model``."""
    experts, routers, projectors, dense_ffn = [], [], [], []
    for name, module in model.named_modules():
        if isinstance(module, MoEBlock):
            experts.append(f"{name}.experts.")
            routers.append(f"{name}.router.")
        elif name.endswith("multi_modal_projector"):
            projectors.append(f"{name}.")
        elif name.endswith(".mlp") and ".layers." in name and ".language_model." in name:
            dense_ffn.append(f"{name}.")
    return experts, routers, projectors, dense_ffn


def prepare_moe_tuning(model: nn.Module, train_dense_ffn: bool = False) -> None:
    """Freeze all but experts, routers and projector (MoE-LLaVA stage 3); LoRA-aware.

    ``model`` is a MoE-LLaVA, bare or wrapped (PEFT, DDP): modules are found by type.
    """
    experts, routers, projectors, dense_ffn = _moe_and_dense_ffn_prefixes(model)
    if not routers:
        from llavakit.models.moe_llava import MoEError

        raise MoEError("prepare_moe_tuning needs a MoE-LLaVA (no MoE layers found); upcycle the dense model first")
    lora = any("lora_" in name for name, _ in model.named_parameters())
    ffn = experts + (dense_ffn if train_dense_ffn else [])
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in routers + projectors):
            train = True  # routers and projector train in full, with or without LoRA
        elif any(name.startswith(p) for p in ffn):
            train = ("lora_" in name) if lora else True
        else:
            train = False
        param.requires_grad_(train)
    model.train()

"""The sparse mixture-of-experts block that replaces an LM's MLP in MoE-LLaVA.

Design decisions (checked against PKU-YuanGroup/MoE-LLaVA, which wraps
DeepSpeed's ``MoE`` layer, and DeepSpeed's ``TopKGate``):

- **Experts are the LM's own MLP class.** The block holds ``E`` copies of the
  decoder layer's MLP module (LlamaMLP, Qwen2MLP, PhiMLP, StableLmMLP, ...), so
  every LM family transformers supports works unchanged and upcycling is a copy.
- **Router**: a bias-free ``Linear(hidden → E)`` evaluated in fp32 (DeepSpeed
  casts the gate and its input to fp32), softmax, top-k, and the chosen weights
  renormalised to sum to 1. Selection uses a *stable* descending sort, so ties go
  to the lower expert index: routing is a pure function of the input (the
  original adds Gumbel noise when choosing the second expert, even at
  inference, which makes its answers vary run to run).
- **Capacity** (training only): each expert takes at most
  ``max(min_capacity, ceil(k·N/E·capacity_factor))`` of the ``N`` tokens in the
  batch; first choices are placed before second choices, earlier tokens before
  later ones (DeepSpeed's order), and overflow assignments are dropped, the
  surviving weights renormalised. At inference nothing is ever dropped, so a
  token's output does not depend on the other tokens in the batch — decoding
  with a KV cache equals recomputing the whole sequence.
- **Load-balancing loss** (DeepSpeed/GShard): ``E·E·mean(me·ce)`` with ``me`` the
  mean router probability per expert and ``ce`` the fraction of tokens whose
  top-1 is that expert. It is left on the block (``aux_loss``) for the model to
  sum, because the decoder layer only passes hidden states through its MLP.
- **Dispatch is sparse**: each expert runs only on the tokens routed to it
  (gather → expert → weighted scatter-add). The same code traces to OpenVINO
  (NonZero/Gather/ScatterElementsUpdate with dynamic shapes), so exported
  models also skip unselected experts. When tracing, the router is written as
  a multiply-and-sum instead of a MatMul: NNCF's weight compression then leaves
  its ``E × C`` weight in float (a few KiB), because a 4- or 8-bit gate can
  flip which experts a token reaches — the reference keeps the gate in fp32 too.
- **Usage statistics**: when ``track_usage`` is on, the block counts how many
  token assignments each expert received (outside autograd, never while
  tracing) — the data behind "which experts fired in this generation".
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 softmax → top-k (ties to the lower index) → renormalised weights.

    Returns probs (N, E), weights (N, k) summing to 1, expert indices (N, k).
    """
    probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (N, E)
    weights, experts = sorted_probs[:, :top_k], order[:, :top_k]  # (N, k)
    weights = weights / weights.sum(dim=-1, keepdim=True)  # (N, k)
    return probs, weights, experts


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float, min_capacity: int) -> int:
    """Most assignments one expert accepts in a training batch of ``num_tokens`` tokens."""
    return max(int(min_capacity), math.ceil(top_k * num_tokens / num_experts * capacity_factor))


def capacity_keep_mask(experts: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Which assignments (N, k) fit: first choices of all tokens queue before second choices."""
    n, k = experts.shape
    onehot = F.one_hot(experts.t().reshape(-1), num_experts)  # (k·N, E), rank-major, then token order
    position = onehot.cumsum(dim=0) - 1  # (k·N, E) place in each expert's queue
    fits = ((position < capacity) & onehot.bool()).any(dim=-1)  # (k·N,)
    return fits.reshape(k, n).t()  # (N, k)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E·E·mean(me·ce): me = mean probability per expert, ce = share of tokens whose top-1 it is."""
    me = probs.mean(dim=0)  # (E,)
    ce = F.one_hot(experts[:, 0], num_experts).float().mean(dim=0)  # (E,)
    return (me * ce).mean() * num_experts * num_experts


class MoEBlock(nn.Module):
    """``E`` copies of an MLP behind a top-k router; a drop-in replacement for that MLP."""

    def __init__(self, mlp: nn.Module, hidden_size: int, num_experts: int = 4, top_k: int = 2,
                 capacity_factor: float = 1.5, min_capacity: int = 0) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.min_capacity = min_capacity
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(copy.deepcopy(mlp) for _ in range(num_experts))
        self.aux_loss: torch.Tensor | None = None
        self.track_usage = False
        self.reset_usage()

    def reset_usage(self) -> None:
        """Zero the assignment counters (kept on the CPU, even when the model is built on meta)."""
        self.usage = torch.zeros(self.num_experts, dtype=torch.long, device="cpu")  # (E,)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])  # (N, C)
        tracing = torch.jit.is_tracing()
        if tracing:  # exports: multiply-and-sum, not a MatMul, so weight compression keeps the router exact
            logits = (flat.float().unsqueeze(-2) * self.router.weight.float()).sum(dim=-1)  # (N, E)
        else:
            logits = F.linear(flat.float(), self.router.weight.float())  # (N, E) in fp32
        probs, weights, experts = route(logits, self.top_k)  # (N, E), (N, k), (N, k)
        self.aux_loss = None if tracing else load_balancing_loss(probs, experts, self.num_experts)
        if self.training and not tracing:
            capacity = expert_capacity(flat.shape[0], self.num_experts, self.top_k,
                                       self.capacity_factor, self.min_capacity)
            keep = capacity_keep_mask(experts, self.num_experts, capacity)  # (N, k)
            weights = weights * keep
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).eps)
            experts = torch.where(keep, experts, -1)  # dropped assignments point at no expert
        if self.track_usage and not tracing:
            with torch.no_grad():
                fired = experts[experts >= 0]
                self.usage = self.usage + torch.bincount(fired.cpu(), minlength=self.num_experts)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)  # (N, C)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(experts == e)  # (n_e,), (n_e,)
            y = expert(flat[token])  # (n_e, C)
            out = out.index_add(0, token, y * weights[token, slot].unsqueeze(-1))  # (N, C)
        return out.reshape(shape)

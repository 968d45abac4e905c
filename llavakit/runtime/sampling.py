"""Choosing the next token from logits, in NumPy so every backend shares it.

Order of operations follows transformers' logits processors: repetition penalty,
temperature, top-k, top-p, then a draw from the softmax. Greedy is a plain argmax
(first index on ties, like ``torch.argmax``), so greedy output is identical
across backends given identical logits.
"""

from __future__ import annotations

import numpy as np

from llavakit.runtime.types import GenerationConfig


def apply_repetition_penalty(logits: np.ndarray, previous: list[int], penalty: float) -> np.ndarray:
    """CTRL-style penalty: divide positive, multiply negative logits of tokens already seen."""
    if penalty == 1.0 or not previous:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(previous, dtype=np.int64))
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def filter_top_k_top_p(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Set logits outside the top-k / nucleus to -inf; always keeps the best token."""
    logits = logits.copy()
    if 0 < top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k)[-top_k]
        logits[logits < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-logits, kind="stable")  # (V,) best first
        probs = _softmax(logits[order])
        cumulative = np.cumsum(probs)
        drop = cumulative - probs > top_p  # tokens whose preceding mass already exceeds top_p
        logits[order[drop]] = -np.inf
    return logits


def sample_next(logits: np.ndarray, cfg: GenerationConfig, previous: list[int], rng: np.random.Generator) -> int:
    """Pick one token id from ``logits`` (V,) under ``cfg``."""
    logits = apply_repetition_penalty(logits.astype(np.float32, copy=False), previous, cfg.repetition_penalty)
    if not cfg.do_sample:
        return int(np.argmax(logits))
    logits = filter_top_k_top_p(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = _softmax(logits)
    return int(rng.choice(probs.shape[-1], p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - np.max(x)
    e = np.exp(x)
    return e / e.sum()

"""The generation loop every backend shares: prefill, decode one token at a time, sample, stream.

Backends only know how to run the model (:class:`Backend`); everything about
choosing tokens, stopping, streaming text and measuring lives here, once, so
the PyTorch reference and the OpenVINO engine cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from llavakit.errors import ContextOverflowError
from llavakit.runtime.sampling import sample_next
from llavakit.runtime.text_stream import TextStream
from llavakit.runtime.types import GenerationConfig, GenerationResult, Metrics


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Backend(Protocol):
    """What the loop needs from a model runner."""

    eos_token_ids: set[int]
    max_context: int

    def prepare(self, messages: list[dict], images: list[Any]) -> Any:
        """Render + tokenize the conversation and preprocess images; returns a prepared prompt."""

    def prompt_length(self, prepared: Any) -> int:
        """Number of tokens in the prepared prompt (image tokens included)."""

    def prefill(self, prepared: Any) -> np.ndarray:
        """Run the prompt, keep the KV cache, return the last position's logits (V,)."""

    def decode_one(self, token_id: int) -> np.ndarray:
        """Append one token to the cache, return its logits (V,)."""

    def decode_text(self, token_ids: list[int]) -> str:
        """Token ids to text, special tokens removed."""


class Generation:
    """A running generation: iterate it for text pieces; ``.result`` is set when it ends."""

    def __init__(self) -> None:
        self._pieces: Iterator[str] = iter(())
        self._callbacks: list[Callable[[GenerationResult], None]] = []
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def on_finish(self, callback: Callable[[GenerationResult], None]) -> Generation:
        """Call ``callback(result)`` when the generation has run to its end (not if it fails)."""
        self._callbacks.append(callback)
        return self

    def _finish(self, result: GenerationResult) -> None:
        self.result = result
        for callback in self._callbacks:
            callback(result)

    def finish(self) -> GenerationResult:
        """Run to the end (discarding pieces not yet read) and return the result."""
        for _ in self._pieces:
            pass
        assert self.result is not None
        return self.result


def start_generation(backend: Backend, prepared: Any, cfg: GenerationConfig) -> Generation:
    """Check the prompt fits, then return a lazily running :class:`Generation`."""
    cfg.validate()
    n_prompt = backend.prompt_length(prepared)
    if n_prompt >= backend.max_context:
        raise ContextOverflowError(
            f"the prompt is {n_prompt} tokens (image tokens included) but the model's context is "
            f"{backend.max_context} tokens: shorten the text, use fewer images, or start a new chat"
        )
    generation = Generation()
    generation._pieces = _run(backend, prepared, cfg, n_prompt, generation)
    return generation


def _run(backend: Backend, prepared: Any, cfg: GenerationConfig, n_prompt: int, out: Generation) -> Iterator[str]:
    """Prefill, then decode until eos, a stop string, ``max_new_tokens`` or the context end."""
    rng = np.random.default_rng(cfg.seed)
    budget = min(cfg.max_new_tokens, backend.max_context - n_prompt)
    stream = TextStream(backend.decode_text, cfg.stop)
    ids: list[int] = []
    finish = "length"
    start = time.perf_counter()
    logits = backend.prefill(prepared)
    first_token_at = decode_start = time.perf_counter()
    while True:
        token = sample_next(logits, cfg, ids, rng)
        if not ids:
            first_token_at = decode_start = time.perf_counter()
        ids.append(token)
        if token in backend.eos_token_ids and not cfg.ignore_eos:
            finish = "stop"
            break
        piece = stream.push(token)
        if piece:
            yield piece
        if stream.stopped:
            finish = "stop"
            break
        if len(ids) >= budget:
            break
        logits = backend.decode_one(token)
    tail = stream.flush()
    if tail:
        yield tail
    end = time.perf_counter()
    decode_s = end - decode_start
    out._finish(GenerationResult(
        text=stream.text,
        token_ids=ids,
        finish_reason=finish,
        metrics=Metrics(
            prompt_tokens=n_prompt,
            generated_tokens=len(ids),
            time_to_first_token_s=first_token_at - start,
            decode_tokens_per_s=(len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else 0.0,
            total_s=end - start,
            cached_tokens=getattr(backend, "cached_tokens", 0),
            image_encode_s=getattr(backend, "image_encode_s", 0.0),
            peak_rss_mb=peak_rss_mb(),
            expert_usage=backend.expert_usage() if hasattr(backend, "expert_usage") else None,
        ),
    ))

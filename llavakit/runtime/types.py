"""Plain data the engine passes around: generation settings, metrics, results.

Kept free of torch and numpy so every backend, the CLI and the server share
them without importing a framework.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop. ``do_sample=False`` is greedy decoding."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks)

    def validate(self) -> None:
        """Refuse settings that cannot mean anything, naming the allowed range."""
        from llavakit.errors import PromptError

        if self.max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise PromptError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PromptError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise PromptError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise PromptError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class Metrics:
    """What one generation cost. Times in seconds."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    images: int = 0
    cached_tokens: int = 0  # prompt tokens answered from the KV cache of earlier requests
    image_encode_s: float = 0.0
    time_to_first_token_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    peak_rss_mb: float = 0.0  # the process's peak resident memory so far
    # MoE models: decoder layer → token assignments per expert in this generation (top-k per computed position)
    expert_usage: dict[int, list[int]] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    """The answer: text (stop string and special tokens removed), generated ids only, metrics."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    finish_reason: str = "length"  # "stop" (eos or stop string) or "length"


def union_of_ids(*sources: int | list[int] | None) -> set[int]:
    """Token ids from config fields that hold an int, a list of ints, or nothing (eos ids)."""
    ids: set[int] = set()
    for src in sources:
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids

"""llavakit: build, train, compress and chat with LLaVA-family vision-language models.

``Pipeline`` is imported lazily so ``import llavakit`` stays cheap (no torch,
no transformers) for tools that only need the CLI or the error types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "GenerationResult", "__version__"]

if TYPE_CHECKING:
    from llavakit.runtime.pipeline import Pipeline
    from llavakit.runtime.types import GenerationResult


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from llavakit.runtime.pipeline import Pipeline

        return Pipeline
    if name == "GenerationResult":
        from llavakit.runtime.types import GenerationResult

        return GenerationResult
    raise AttributeError(f"module 'llavakit' has no attribute {name!r}")

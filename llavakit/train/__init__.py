"""Training: stage recipes (align / instruct / moe), freezing, LoRA, the Trainer wiring, resume.

    from llavakit.train import TrainJob, resolve_recipe, train
"""

from llavakit.train.recipes import (
    STAGES,
    Recipe,
    RecipeError,
    default_recipe,
    resolve_recipe,
)

__all__ = ["STAGES", "Recipe", "RecipeError", "TrainJob", "TrainResult", "default_recipe", "resolve_recipe", "train"]


def __getattr__(name: str):
    """The Trainer wiring (torch, transformers) loads on first use, so recipes stay light."""
    if name in ("TrainJob", "TrainResult", "train"):
        from llavakit.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'llavakit.train' has no attribute {name!r}")

"""Training recipes: one typed dataclass per run, the published LLaVA-1.5 recipes scaled down.

Design decisions:

* **One dataclass is the truth** (DESIGN.md: "one typed config, saved beside the
  weights"). Defaults come from :func:`default_recipe` for the stage; a recipe file
  (YAML or JSON) overrides them; CLI options override the file. The recipe that
  actually ran is written to ``<out>/recipe.json``, so a run can be repeated with
  ``--recipe <out>/recipe.json``.
* **Published numbers, scaled down.** LLaVA-1.5 stage 1 ("align", projector only):
  lr 1e-3, batch 256, 1 epoch, warmup 3%, cosine, no weight decay. Stage 2
  ("instruct", projector + LM): lr 2e-5 full or 2e-4 LoRA (r 128, alpha 256),
  batch 128, 1 epoch, warmup 3%, cosine. The batch sizes here are per device and
  small (a laptop or one GPU); the learning rates stay the published ones because
  the projector/LoRA rates are robust across batch sizes in practice.
* **moe** (MoE-LLaVA stage 3) uses the instruct numbers with the router aux loss
  coefficient 0.01 of the reference; its freezing rules live in ``moe_freeze.py``.
* Unknown keys and values of the wrong type are refused with the allowed list,
  never silently ignored (a typo in a recipe file must not train the wrong thing).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError

STAGES = ("align", "instruct", "moe")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr")


class RecipeError(LlavakitError):
    """A recipe file or option is malformed (unknown key, wrong type, impossible value)."""


@dataclass
class Recipe:
    """Every hyperparameter of one training run (saved as ``recipe.json`` next to the model)."""

    stage: str = "align"
    # optimisation
    learning_rate: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # per device
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # data
    max_length: int = 2048  # tokens per sample after image expansion; longer samples are truncated
    skip_invalid: bool = False  # drop (and report) bad samples instead of refusing the data set
    swap_words: str = ""  # word groups swapped in the answer *input* ("red,green;a,an"), data/word_swap.py
    swap_prob: float = 0.0  # per-token probability of a swap (0: off)
    # what is trained
    train_projector: bool = True
    train_lm: bool = False
    train_vision: bool = False
    lora: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    merge_lora: bool = False
    router_aux_loss_coef: float = 0.01  # moe stage only
    moe_train_dense_ffn: bool = False  # moe: also train the non-MoE layers' FFNs (the reference's wider set)
    # checkpoints and logs
    save_steps: int = 500
    eval_steps: int = 0  # with eval data: evaluate every N steps (0: every save_steps)
    save_total_limit: int = 2
    logging_steps: int = 10
    # speed (must not change the loss curve materially)
    bf16: bool = False
    group_by_length: bool = False
    packing: bool = False  # needs attn_implementation flash_attention_2/3
    torch_compile: bool = False
    gradient_checkpointing: bool = False
    dataloader_workers: int = 0
    attn_implementation: str | None = None  # e.g. "sdpa", "flash_attention_2"
    extra: dict[str, Any] = field(default_factory=dict)  # passed to transformers.TrainingArguments as is

    def validate(self) -> Recipe:
        """Refuse impossible values, naming the field and what is allowed."""
        if self.stage not in STAGES:
            raise RecipeError(f"unknown stage {self.stage!r}; choose one of {list(STAGES)}")
        if self.lr_scheduler not in SCHEDULERS:
            raise RecipeError(f"unknown lr_scheduler {self.lr_scheduler!r}; choose one of {list(SCHEDULERS)}")
        positive = {"learning_rate": self.learning_rate, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "max_length": self.max_length, "save_steps": self.save_steps,
                    "logging_steps": self.logging_steps, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha}
        for name, value in positive.items():
            if value <= 0:
                raise RecipeError(f"{name} must be > 0, got {value}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise RecipeError("set epochs > 0 or max_steps > 0 (both are <= 0: nothing to train)")
        if not 0 <= self.warmup_ratio < 1:
            raise RecipeError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.swap_prob <= 1:
            raise RecipeError(f"swap_prob must be in [0, 1], got {self.swap_prob}")
        if self.swap_prob > 0 and not self.swap_words.strip():
            raise RecipeError("swap_prob > 0 needs swap_words (comma-separated words, groups separated by ';')")
        if self.swap_words.strip():
            from llavakit.data.word_swap import parse_groups

            try:
                parse_groups(self.swap_words)  # before a model is loaded; tokens are checked with the tokenizer
            except LlavakitError as exc:
                raise RecipeError(str(exc)) from None
        if self.dataloader_workers < 0:
            raise RecipeError(f"dataloader_workers must be >= 0, got {self.dataloader_workers}")
        if self.lora and not self.train_lm:
            raise RecipeError("lora=true adapts the language model: it needs train_lm=true (stage instruct or moe)")
        if self.merge_lora and not self.lora:
            raise RecipeError("merge_lora=true needs lora=true")
        if not (self.train_projector or self.train_lm or self.train_vision):
            raise RecipeError("nothing to train: train_projector, train_lm and train_vision are all false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_recipe(stage: str, lora: bool = False) -> Recipe:
    """The scaled-down published recipe for ``stage`` (LoRA changes the instruct learning rate)."""
    if stage == "align":
        return Recipe(stage="align", learning_rate=1e-3, train_projector=True, train_lm=False)
    if stage == "instruct":
        return Recipe(stage="instruct", learning_rate=2e-4 if lora else 2e-5, train_projector=True, train_lm=True,
                      lora=lora, batch_size=4, grad_accum=2)
    if stage == "moe":
        return Recipe(stage="moe", learning_rate=2e-4 if lora else 2e-5, train_projector=True, train_lm=True,
                      lora=lora, batch_size=4, grad_accum=2)
    raise RecipeError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The key/value pairs of a YAML (.yaml/.yml) or JSON recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise RecipeError(f"recipe file {path} must end in .yaml, .yml or .json")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecipeError(f"could not parse recipe file {path}: {exc}") from exc
    else:
        import yaml  # PyYAML: a dependency of accelerate, pinned in the train extra

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"could not parse recipe file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a mapping of field: value, not {type(data).__name__}")
    return data


def apply_overrides(recipe: Recipe, overrides: dict[str, Any], source: str) -> Recipe:
    """A copy of ``recipe`` with ``overrides`` applied, each checked against the field's type."""
    known = {f.name: f for f in fields(Recipe)}
    hints = typing.get_type_hints(Recipe)
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in known:
            raise RecipeError(f"{source}: unknown recipe field {key!r}; known fields: {sorted(known)}")
        changes[name] = _coerce(name, value, hints[name], source)
    return replace(recipe, **changes)


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check (and widen int->float) ``value`` for a field typed ``hint``."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (bool, str, dict) and isinstance(value, origin):
            return value
    names = " or ".join(getattr(typing.get_origin(k) or k, "__name__", str(k)) for k in allowed)
    raise RecipeError(f"{source}: recipe field {name!r} must be {names}, got {value!r}")


def resolve_recipe(stage: str, lora: bool = False, recipe_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> Recipe:
    """Stage defaults, then the recipe file, then explicit overrides (CLI options); validated."""
    file_values = read_recipe_file(recipe_file) if recipe_file else {}
    file_stage = file_values.get("stage", stage)
    if file_stage != stage:
        raise RecipeError(f"recipe file {recipe_file} is for stage {file_stage!r} but --stage is {stage!r}")
    want_lora = bool((overrides or {}).get("lora", file_values.get("lora", lora)))
    recipe = default_recipe(stage, lora=want_lora)
    if file_values:
        recipe = apply_overrides(recipe, file_values, f"recipe file {recipe_file}")
    if overrides:
        recipe = apply_overrides(recipe, overrides, "option")
    return recipe.validate()


#: Fields a resumed run must share with the run it continues: they shape the checkpoint (LoRA, what trains)
#: or the data order and step size (batch, accumulation, seed). The rest (max_steps, logging, workers) may change.
RESUME_FIXED = ("stage", "lora", "lora_r", "lora_alpha", "train_projector", "train_lm", "train_vision",
                "batch_size", "grad_accum", "seed", "group_by_length", "packing")


def check_resume_compatible(recipe: Recipe, saved_path: str | Path) -> None:
    """Refuse to resume with a recipe that would not continue the saved run (naming each difference)."""
    path = Path(saved_path)
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    diffs = [f"{k}: {saved[k]!r} -> {getattr(recipe, k)!r}" for k in RESUME_FIXED
             if k in saved and saved[k] != getattr(recipe, k)]
    if diffs:
        raise RecipeError(f"--resume with a recipe that differs from the run's ({path}) in what cannot change "
                          f"mid-run: {'; '.join(diffs)}. Use the same options, or start over with --force")


def save_recipe(recipe: Recipe, out_dir: str | Path) -> Path:
    """Write ``recipe.json`` into ``out_dir`` (the exact recipe used; feed it back with --recipe)."""
    path = Path(out_dir) / "recipe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(recipe.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

"""``llavakit train``: the align, instruct and moe stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llavakit.cli import app, err, friendly_errors, out


@app.command()
@friendly_errors
def train(
    stage: Annotated[str, typer.Option(help="align (projector only), instruct (projector + LM) or moe.")],
    model: Annotated[Path, typer.Option(help="LLaVA model directory (`llavakit build`, or the previous stage's --out), "
                                              "or a default model: nano, budget.")],
    data: Annotated[Path, typer.Option(help="Training data: LLaVA JSON or HF messages JSON/JSONL.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output: trained model, recipe.json, train_log.csv, checkpoints/.")],
    recipe: Annotated[Path | None, typer.Option(help="Recipe file (.yaml/.json); options below override it.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps (overrides --epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (align 1e-3, instruct 2e-5, LoRA 2e-4).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per device per step.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest sample in tokens (image tokens included).")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA on the LM (instruct, moe) or full tuning.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha.")] = None,
    merge_lora: Annotated[bool | None, typer.Option("--merge-lora/--keep-adapter",
                                                       help="Merge LoRA into the output model, or keep the adapter.")] = None,
    save_steps: Annotated[int | None, typer.Option(help="Write a checkpoint every N steps.")] = None,
    logging_steps: Annotated[int | None, typer.Option(help="Log loss every N steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="bf16 autocast (GPU).")] = None,
    group_by_length: Annotated[bool | None, typer.Option(help="Batch samples of similar length (less padding).")] = None,
    packing: Annotated[bool | None, typer.Option(help="Pack samples into one row (needs flash attention).")] = None,
    attn: Annotated[str | None, typer.Option(help="Attention kernel: sdpa, eager, flash_attention_2, ...")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option(help="Recompute activations (less memory).")] = None,
    workers: Annotated[int | None, typer.Option(help="Dataloader worker processes.")] = None,
    skip_bad: Annotated[bool | None, typer.Option(help="Drop (and report) unusable samples instead of stopping.")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Validation data: eval loss every --eval-steps.")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Evaluate every N steps (default: --save-steps).")] = None,
    train_vision: Annotated[bool | None, typer.Option("--train-vision/--freeze-vision",
                                                         help="Also train the vision tower (from-scratch towers).")] = None,
    swap_words: Annotated[str | None, typer.Option(
        help="Answer words swapped in the input so the next word is read from the image, not from them: "
             "comma-separated words, groups separated by ';' (e.g. 'red,green,blue;a,an').")] = None,
    swap_prob: Annotated[float | None, typer.Option(help="Per-word probability of a --swap-words swap.")] = None,
    adapter: Annotated[Path | None, typer.Option(
        help="Continue this LoRA adapter (its rank and targets; trained on --model) instead of a fresh one.")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Folder relative image paths start from.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last complete checkpoint in --out.")] = False,
    force: Annotated[bool, typer.Option(help="Start over in a non-empty --out.")] = False,
) -> None:
    """Train one LLaVA stage with the transformers Trainer (works under torchrun / accelerate launch)."""
    from llavakit.train import TrainJob, resolve_recipe
    from llavakit.train import train as run_training
    from llavakit.train.trainer import is_main_process

    given: dict[str, Any] = {
        "max_steps": max_steps, "epochs": epochs, "learning_rate": lr, "batch_size": batch_size,
        "grad_accum": grad_accum, "max_length": max_length, "lora": lora, "lora_r": lora_r,
        "lora_alpha": lora_alpha, "merge_lora": merge_lora, "save_steps": save_steps,
        "logging_steps": logging_steps, "seed": seed, "bf16": bf16, "group_by_length": group_by_length,
        "packing": packing, "attn_implementation": attn, "torch_compile": compile,
        "gradient_checkpointing": gradient_checkpointing, "dataloader_workers": workers, "skip_invalid": skip_bad,
        "eval_steps": eval_steps, "train_vision": train_vision, "swap_words": swap_words, "swap_prob": swap_prob,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    chosen = resolve_recipe(stage, lora=bool(lora) or (adapter is not None and lora is None), recipe_file=recipe,
                            overrides=overrides)
    main = is_main_process()
    result = run_training(TrainJob(model=model, data=data, out=out_dir, recipe=chosen, resume=resume, force=force,
                                   image_root=image_root, progress=main, eval_data=eval_data,
                                   adapter=adapter))
    if not main:
        return
    if result.resumed_from:
        err.print(f"resumed from {result.resumed_from}")
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    out.print(f"{chosen.stage}: {result.steps} steps on {result.samples} samples, final loss {loss}; "
              f"{result.trainable.summary()}")
    what = "LoRA adapter" if result.adapter == result.out else "model"
    out.print(f"wrote {what} to {result.out} (loss curve: {result.log})"
              + (f"; adapter kept in {result.adapter}" if result.merged else ""))

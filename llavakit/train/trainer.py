"""``train()``: one LLaVA training stage (align, instruct, moe) on the transformers Trainer.

    from llavakit.train import TrainJob, resolve_recipe, train
    recipe = resolve_recipe("align", overrides={"max_steps": 100})
    result = train(TrainJob(model="tiny-llava", data="shapes/train.json", out="runs/align", recipe=recipe))

Design decisions:

* **The Trainer, not a loop of our own.** transformers' ``Trainer`` owns the loop,
  mixed precision, gradient accumulation (token-weighted loss through
  ``num_items_in_batch``), DDP / FSDP / DeepSpeed (from ``accelerate launch`` or
  ``torchrun`` env, unchanged), checkpoints and exact resume (optimizer,
  scheduler, RNG states, data position). llavakit adds the stage's freezing,
  LoRA, data (``llavakit.data``), the callbacks and the output layout.
* **Output layout** (``--out DIR``)::

      DIR/config.json, model.safetensors, processor + tokenizer + chat template   the trained model
          (or adapter_config.json + adapter_model.safetensors: a LoRA run not merged)
      DIR/adapter/            the LoRA adapter too, when it was merged into DIR
      DIR/recipe.json         the recipe used (feed back with --recipe)
      DIR/train_log.csv       the loss curve (step, loss, lr, grad norm, tokens/s)
      DIR/tensorboard/        when tensorboard is installed
      DIR/checkpoints/checkpoint-N/   committed checkpoints (see checkpoints.py)
      DIR/llavakit_train.json written last: the run finished and DIR holds its model

  Model files are written to a temporary folder and renamed into DIR one by one;
  ``llavakit_train.json`` comes last, so its presence means the model is complete.
* **Speed options keep the loss curve**: bf16 autocast (fp32 master weights),
  length-grouped batches (``group_by_length``: less padding, same samples per
  step), ``pad_to_multiple_of=8`` under bf16, ``torch.compile``, dataloader
  workers, gradient checkpointing. Sequence packing (``packing``) restarts
  ``position_ids`` per sample and needs an attention kernel that honours that
  (``flash_attention_2``/``flash_attention_3``); with any other kernel samples
  would attend to each other and change the loss, so it is refused.
  Gradient clipping is folded into the fused AdamW step where that is exact
  (``fused_clip``: one pass over the gradients fewer), and the step never
  waits for the GPU (``sync_free``: the loss filter on the device,
  non-blocking batch copies), so the CPU launches step N+1 while step N runs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from llavakit.errors import LlavakitError
from llavakit.export.declared import BUILD_INFO, trained_build_info, write_build_info
from llavakit.train import checkpoints, fused_clip, sync_free
from llavakit.train.callbacks import (
    CommitCheckpointCallback,
    CsvLogCallback,
    EvalLogCallback,
    RichProgressCallback,
    tensorboard_callback,
)
from llavakit.train.compile_ready import compile_ready
from llavakit.train.freeze import FreezeReport, apply_freezing, count_trainable
from llavakit.train.recipes import (
    Recipe,
    RecipeError,
    check_resume_compatible,
    save_recipe,
)

PACKING_KERNELS = ("flash_attention_2", "flash_attention_3")
RUN_FILES = ("recipe.json", "train_log.csv", "eval_log.csv", BUILD_INFO, "llavakit_train.json")


@dataclass
class TrainJob:
    """What to train, on what, into where."""

    model: str | Path
    data: str | Path
    out: str | Path
    recipe: Recipe
    resume: bool = False  # continue from the last committed checkpoint in out/checkpoints
    force: bool = False  # start over in an existing output directory
    image_root: str | Path | None = None
    progress: bool = True
    eval_data: str | Path | None = None  # validation loss every eval_steps (eval_log.csv)
    adapter: str | Path | None = None  # continue this LoRA adapter (trained on ``model``) instead of a fresh one


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path
    steps: int
    final_loss: float | None
    resumed_from: Path | None
    adapter: Path | None
    merged: bool
    trainable: FreezeReport
    samples: int
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def train(job: TrainJob) -> TrainResult:
    """Run one training stage end to end and write the model into ``job.out``."""
    recipe = _with_adapter_shape(job.recipe.validate(), job.adapter)
    base = model_path(job.model)  # before the output is touched: a wrong --model leaves nothing behind
    out = Path(job.out)
    ckpt_root = out / "checkpoints"
    resume_from = _prepare_output(out, ckpt_root, job)
    if is_main_process():
        save_recipe(recipe, out)

    processor, model = load_model(base, recipe)
    dataset, collator, n_samples = build_data(job.data, job, processor, model, recipe, train_split=True)
    eval_dataset = build_data(job.eval_data, job, processor, model, recipe)[0] if job.eval_data else None
    set_seed(recipe.seed)  # LoRA adapters are initialised randomly before the Trainer seeds anything
    model, report = prepare_model(model, recipe, adapter=job.adapter)

    args = training_arguments(recipe, ckpt_root, evaluate=eval_dataset is not None)
    callbacks: list = [CsvLogCallback(out / "train_log.csv", resume_step=_step_of(resume_from)),
                       EvalLogCallback(out / "eval_log.csv", resume_step=_step_of(resume_from)),
                       CommitCheckpointCallback(keep=recipe.save_total_limit)]
    if job.progress:
        callbacks.append(RichProgressCallback())
    if args.process_index == 0 and (tb := tensorboard_callback(out / "tensorboard")) is not None:
        callbacks.append(tb)
    trainer = LlavakitTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                              data_collator=collator,
                              processing_class=processor, callbacks=callbacks,
                              lengths=_length_proxy(dataset, model) if recipe.group_by_length else None)
    trainer.remove_callback(PrinterCallback)  # our progress bar and CSV log report instead
    trainer.remove_callback(ProgressCallback)
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    adapter, merged = _save_final(trainer, processor, out, recipe)
    final_loss = _last_logged_loss(trainer)
    if final_loss is None:  # a run shorter than logging_steps: the mean training loss is all there is
        final_loss = float(output.training_loss)
    if trainer.is_world_process_zero():
        record = {"stage": recipe.stage, "base_model": str(base.resolve()), "data": str(job.data),
                  "steps": trainer.state.global_step, "train_loss": output.training_loss, "final_loss": final_loss,
                  "samples": n_samples, "world_size": trainer.args.world_size,
                  "distributed": str(trainer.accelerator.distributed_type.value), "lora": recipe.lora,
                  "merged": merged, "adapter_from": str(Path(job.adapter).resolve()) if job.adapter else None,
                  "resumed_from": str(resume_from) if resume_from else None,
                  "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                               "peft": _version("peft") if recipe.lora else None}}
        # export defaults (calibration domain, recipes, image fit) carry over from the base model
        if declared := trained_build_info(base, job.data):
            write_build_info(out, {"built_by": "llavakit train", **declared})
        _write_json(out / "llavakit_train.json", record)
    return TrainResult(out=out, steps=trainer.state.global_step, final_loss=final_loss, resumed_from=resume_from,
                       adapter=adapter, merged=merged, trainable=report, samples=n_samples,
                       log=out / "train_log.csv")


# ----------------------------------------------------------------------------------------- pieces


def model_path(ref: str | Path) -> Path:
    """The directory of ``ref``: itself, or what a name every command takes stands for (nano, budget: assembled
    on first use, a hub id)."""
    path = Path(ref)
    if path.exists():
        return path
    from llavakit.checkpoints.resolve import resolve_source

    return resolve_source(ref)


def load_model(model_dir: str | Path, recipe: Recipe) -> tuple[Any, torch.nn.Module]:
    """Processor and model of a llavakit/transformers LLaVA directory (or a default model's name), in fp32.

    bf16 is autocast. ``budget`` is its merged model: a LoRA trained on it is a new adapter on top of budget."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import llavakit.models.moe_llava  # noqa: F401  (registers "moe_llava" with the Auto classes)

    path = model_path(model_dir)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise LlavakitError(f"--model {model_dir} is a LoRA adapter, not a model; train the previous stage with "
                            f"--merge-lora (its adapter stays in OUT/adapter) and pass that output")
    if not (path / "config.json").is_file():
        raise LlavakitError(f"--model {model_dir} is not a model directory (no config.json); build one with "
                            f"`llavakit build` or pass an earlier stage's --out")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if recipe.attn_implementation:
        kwargs["attn_implementation"] = recipe.attn_implementation
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(str(path.resolve()), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise LlavakitError(f"could not load a LLaVA model from {model_dir}: {exc}") from exc
    kind = model.config.model_type
    if kind not in ("llava", "moe_llava"):
        raise LlavakitError(f"{model_dir} holds a {kind!r} model; llavakit trains 'llava' and 'moe_llava'")
    if recipe.stage == "moe" and kind != "moe_llava":
        raise LlavakitError(f"--stage moe needs a MoE-LLaVA, but {model_dir} is a dense {kind!r} model; "
                            f"make one with `llavakit upcycle` first")
    return processor, model


def build_data(path: str | Path, job: TrainJob, processor: Any, model: torch.nn.Module, recipe: Recipe,
               train_split: bool = False) -> tuple[Any, Any, int]:
    """Read and validate the whole data file up front, then the lazy dataset and the collator.

    ``train_split``: the recipe's word swap (data/word_swap.py) applies; evaluation data is never swapped."""
    from llavakit.data import Collator, ConversationDataset, read_dataset, validate
    from llavakit.data.word_swap import WordSwap

    samples = validate(read_dataset(path, image_root=job.image_root), skip_bad=recipe.skip_invalid)
    if recipe.packing:
        kernel = getattr(model.config.get_text_config(), "_attn_implementation", None)
        if kernel not in PACKING_KERNELS:
            raise RecipeError(f"packing=true needs an attention kernel that keeps packed samples apart "
                              f"({', '.join(PACKING_KERNELS)}); this model runs {kernel!r}. Use "
                              f"group_by_length=true instead, or set attn_implementation")
    swap = WordSwap.from_spec(processor, recipe.swap_words, recipe.swap_prob) if train_split else None
    dataset = ConversationDataset(samples, processor, max_length=recipe.max_length, swap=swap)
    collator = Collator.for_processor(processor, pad_to_multiple_of=8 if recipe.bf16 else None, pack=recipe.packing)
    return dataset, collator, len(samples)


def _with_adapter_shape(recipe: Recipe, adapter: str | Path | None) -> Recipe:
    """The recipe with the continued adapter's rank and alpha (they are what its weights mean)."""
    if adapter is None:
        return recipe
    if not recipe.lora:
        raise RecipeError("--adapter continues a LoRA adapter: it needs lora=true (--lora)")
    from dataclasses import replace

    from llavakit.train.lora import adapter_shape

    r, alpha = adapter_shape(adapter)
    return replace(recipe, lora_r=r, lora_alpha=alpha).validate()


def prepare_model(model: torch.nn.Module, recipe: Recipe,
                  adapter: str | Path | None = None) -> tuple[torch.nn.Module, FreezeReport]:
    """Freeze by stage, add LoRA (fresh, or ``adapter`` continued) if asked, apply MoE-tuning rules."""
    if recipe.lora and recipe.train_vision:
        raise RecipeError("lora=true with train_vision=true is not supported: LoRA adapts the language model only")
    apply_freezing(model, train_vision=recipe.train_vision, train_projector=recipe.train_projector,
                   train_lm=recipe.train_lm and not recipe.lora)
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still get a grad path
    if recipe.lora:
        from llavakit.train.lora import add_lora, continue_lora

        model = continue_lora(model, adapter) if adapter is not None else \
            add_lora(model, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, moe=recipe.stage == "moe")
    if recipe.stage == "moe":
        from llavakit.train.moe_freeze import prepare_moe_tuning

        model.config.moe["router_aux_loss_coef"] = recipe.router_aux_loss_coef
        prepare_moe_tuning(model, train_dense_ffn=recipe.moe_train_dense_ffn)
        for name, param in model.named_parameters():
            if ".original_module." in name:  # PEFT's frozen copy of a modules_to_save module: never used in forward
                param.requires_grad_(False)
    report = count_trainable(model)
    if sum(report.trainable.values()) == 0:
        raise RecipeError("the recipe leaves no parameter trainable")
    return model, report


def training_arguments(recipe: Recipe, output_dir: Path, evaluate: bool = False) -> TrainingArguments:
    """The recipe as ``TrainingArguments`` (works on transformers 5.17 through 5.23)."""
    pin = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(  # noqa: C408 (keyword form reads like TrainingArguments)
        output_dir=str(output_dir),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        warmup_steps=recipe.warmup_ratio,  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=recipe.lr_scheduler,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=None,  # rotation happens after the commit (CommitCheckpointCallback)
        seed=recipe.seed,
        bf16=recipe.bf16,
        torch_compile=recipe.torch_compile,
        dataloader_num_workers=recipe.dataloader_workers,
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
        remove_unused_columns=False,  # the collator makes the batch; nothing to drop
        dataloader_pin_memory=pin,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=recipe.stage == "moe",  # an expert may get no token in a step
        report_to="none",
        disable_tqdm=True,
        # no GPU and several processes (DDP over gloo) or bf16 (CPU autocast): transformers does either only
        # when told to use the CPU
        use_cpu=not torch.cuda.is_available() and (int(os.environ.get("WORLD_SIZE", "1")) > 1 or recipe.bf16),
    )
    accelerator_config = sync_free.accelerator_config(pin)  # batch copies that do not sync (sync_free.py)
    if accelerator_config:
        kwargs.update(accelerator_config=accelerator_config)
    if evaluate:
        kwargs.update(eval_strategy="steps", eval_steps=recipe.eval_steps or recipe.save_steps,
                      per_device_eval_batch_size=recipe.batch_size)
    if recipe.gradient_checkpointing:  # (named activation_checkpointing from transformers 5.2x on; both accept this)
        kwargs.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    kwargs.update(recipe.extra)
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid training arguments (check the recipe's 'extra' block): {exc}") from exc


class LlavakitTrainer(Trainer):
    """The transformers Trainer, with length grouping from precomputed lengths (no image decoding to sort)."""

    def __init__(self, *args: Any, lengths: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lengths = lengths

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self._lengths is not None and self.args.train_sampling_strategy == "group_by_length":
            from transformers.trainer_pt_utils import LengthGroupedSampler

            generator = torch.Generator()
            generator.manual_seed(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=self._lengths, generator=generator)
        return super()._get_train_sampler(train_dataset)

    _device_loss_filter = False  # while training: llavakit filters non-finite step losses (sync_free.py)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train`` with the LLaVA forward traceable as one graph (see ``compile_ready``) and a step
        that never waits for the GPU (see ``sync_free``)."""
        with compile_ready(self.model), sync_free.device_loss_filter(self) as own:
            self._device_loss_filter = own
            try:
                return super().train(*args, **kwargs)
            finally:
                self._device_loss_filter = False

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """The Trainer's step; a NaN/inf loss replaced on the device, as transformers would on the host."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        running = getattr(self, "_tr_loss", None)
        if self._device_loss_filter and torch.is_tensor(running):
            loss = sync_free.finite_or_running_mean(loss, running,
                                                    self.state.global_step - self._globalstep_last_logged)
        return loss

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluation keeps transformers' own non-finite filter (it drops bad eval losses)."""
        with sync_free.host_loss_filter(self, self._device_loss_filter):
            return super().evaluation_loop(*args, **kwargs)

    def _clip_grad_norm(self, model: Any) -> Any:
        """Clip inside the fused optimizer step where that is exact (``fused_clip``), else the Trainer's way."""
        optimizer = fused_clip.fused_optimizer(self, model)
        if optimizer is None:
            return super()._clip_grad_norm(model)
        fused_clip.announce_once(self)
        return fused_clip.clip_into(optimizer, model.parameters(), self.args.max_grad_norm)

    _tokens_pending: Any = None  # tokens seen since the last log/save: an int, or a device tensor on a GPU

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        """Count the step's tokens without a host-device sync; the count is read when it is logged or saved.

        Why: transformers' version ends in ``.item()`` every step, right after the backward is queued, so
        the CPU waits for the GPU, and the GPU then idles while the clip, the optimizer step and the next
        forward are launched (``train_bench --profile``: 74 ms of kernels in a 94 ms bench-1b step).
        """
        mode = self.args.include_num_input_tokens_seen
        if mode in ("no", False, None):
            return
        mask, ids = inputs.get("attention_mask"), inputs.get("input_ids")
        if mode == "non_padding" and mask is not None:
            count = mask.sum()
        elif ids is not None:
            count = ids.numel()
        else:  # no input_ids: transformers' own rule (and its warning)
            super()._track_num_input_tokens(inputs)
            return
        if self.args.world_size > 1:  # every rank must join the gather (an async collective, no sync)
            count = self.accelerator.gather(torch.as_tensor(count, device=self.args.device, dtype=torch.int64)).sum()
        elif torch.is_tensor(count) and count.device.type == "cpu":
            count = int(count)
        self._tokens_pending = count if self._tokens_pending is None else self._tokens_pending + count

    def _flush_tokens(self) -> None:
        if self._tokens_pending is not None:
            self.state.num_input_tokens_seen += int(self._tokens_pending)
            self._tokens_pending = None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        self._flush_tokens()
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self._flush_tokens()  # the saved trainer state carries the exact count
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Resume a plain (non-PEFT, non-sharded) model with its names converted (see checkpoints.py)."""
        from transformers import PreTrainedModel

        target = model if model is not None else self.model
        if isinstance(target, PreTrainedModel) and not self.is_fsdp_enabled and not self.is_deepspeed_enabled:
            checkpoints.load_model_weights(target, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def _length_proxy(dataset: Any, model: torch.nn.Module) -> list[int]:
    """Approximate token count per sample (text chars / 3 + image tokens): enough to group by length."""
    per_image = int(getattr(model.config, "image_seq_length", 576) or 576)
    return [sum(len(s.text_of(m)) for m in s.messages) // 3 + per_image * len(s.images) for s in dataset.samples]


def _prepare_output(out: Path, ckpt_root: Path, job: TrainJob) -> Path | None:
    """Check the output directory against --resume/--force; return the checkpoint to resume from."""
    if job.resume:
        check_resume_compatible(job.recipe, out / "recipe.json")
        if is_main_process():
            checkpoints.remove_uncommitted(ckpt_root)
        return checkpoints.last_committed(ckpt_root)
    if not is_main_process():  # rank 0 decides (and fails the launch if it must); others may see its files
        return None
    has_content = out.is_dir() and any(out.iterdir())
    if has_content and not job.force:
        raise LlavakitError(f"output directory {out} is not empty; pass --resume to continue its run or "
                            f"--force to start over")
    if has_content:
        shutil.rmtree(ckpt_root, ignore_errors=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None


def _save_final(trainer: Trainer, processor: Any, out: Path, recipe: Recipe) -> tuple[Path | None, bool]:
    """Write the model (or adapter) into ``out``: into a temp folder first, then renamed in file by file.

    Every rank calls this (FSDP/DeepSpeed gather shards inside ``save_model``); only the main one writes.
    """
    from llavakit.train.lora import is_peft, merge_lora

    model = trainer.model
    main = trainer.is_world_process_zero()
    tmp = out / ".model.partial"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    adapter: Path | None = out if recipe.lora else None
    merged = recipe.lora and recipe.merge_lora
    try:
        trainer.save_model(str(tmp))  # the trained model, or the LoRA adapter (+ projector) of a PEFT model
        if not main:
            return adapter, merged
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; recipe.json says it all
        if merged:
            adapter = out / "adapter"
            shutil.rmtree(adapter, ignore_errors=True)
            os.replace(tmp, adapter)
            plain = merge_lora(model) if is_peft(model) else model
            plain.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        for stale in ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                      "adapter_config.json"):
            if not (tmp / stale).exists():
                (out / stale).unlink(missing_ok=True)  # a previous run's weights of the other kind
        for entry in sorted(tmp.iterdir()):
            os.replace(entry, out / entry.name)
    finally:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
    return adapter, merged


def _last_logged_loss(trainer: Trainer) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return float(losses[-1]) if losses else None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)

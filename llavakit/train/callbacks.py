"""Trainer callbacks: rich progress bar, CSV loss log, checkpoint commit + rotation, TensorBoard.

All of them are ordinary ``transformers.TrainerCallback`` objects, so they work
the same under one process, ``torchrun`` / ``accelerate launch`` (DDP, FSDP) and
DeepSpeed. Design decisions:

* Only the main process draws or writes (``state.is_world_process_zero``).
* tokens/s counts non-padding input tokens (the Trainer's
  ``num_input_tokens_seen`` with ``include_num_input_tokens_seen="non_padding"``),
  summed over processes: a packed or length-grouped run and a padded run of the
  same data report comparable numbers.
* The CSV log is the loss curve of record. On resume it is cut back to the
  resumed checkpoint's step before new rows are appended, so a killed-and-resumed
  run leaves one continuous curve, not the killed run's extra steps twice.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from llavakit.train import checkpoints

CSV_COLUMNS = ("step", "epoch", "loss", "grad_norm", "learning_rate", "tokens_seen", "tokens_per_s", "elapsed_s")


class RichProgressCallback(TrainerCallback):
    """A rich progress bar: step M/N, loss, tokens/s, elapsed and ETA."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self._last_tokens = 0
        self._last_time = 0.0
        self._loss = "?"
        self._rate = "?"

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if not state.is_world_process_zero:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps or None, stats="")
        self._last_time = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.progress is not None:
            # completed= (not advance): after a resume the bar starts at the checkpoint's step
            self.progress.update(self.task, completed=state.global_step, total=state.max_steps)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kw: Any):
        if self.progress is None or not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if now > self._last_time and seen >= self._last_tokens:
            self._rate = f"{(seen - self._last_tokens) / (now - self._last_time):,.0f}"
        self._last_time, self._last_tokens = now, seen
        self._loss = f"{logs['loss']:.4f}"
        self.progress.update(self.task, stats=f"loss {self._loss}  {self._rate} tok/s")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class CsvLogCallback(TrainerCallback):
    """Append one row per logging step to ``path`` (the loss curve of record)."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self._last_tokens = 0
        self._last_time = time.perf_counter()
        self._start = self._last_time
        self._elapsed_before = 0.0
        if int(os.environ.get("RANK", "0")) == 0:  # only the main process owns the file
            self._cut_back(resume_step)

    def _cut_back(self, resume_step: int | None) -> None:
        """Keep rows up to ``resume_step`` (a fresh run, None, keeps none)."""
        rows = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        if rows:
            self._elapsed_before = float(rows[-1]["elapsed_s"] or 0.0)
            self._last_tokens = int(float(rows[-1]["tokens_seen"] or 0))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kw: Any):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        rate = (seen - self._last_tokens) / (now - self._last_time) if now > self._last_time else math.nan
        self._last_time, self._last_tokens = now, seen
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
               "grad_norm": logs.get("grad_norm", ""), "learning_rate": logs.get("learning_rate", ""),
               "tokens_seen": seen, "tokens_per_s": round(rate, 1),
               "elapsed_s": round(self._elapsed_before + now - self._start, 3)}
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=CSV_COLUMNS).writerow(row)


class EvalLogCallback(TrainerCallback):
    """Append ``step,eval_loss`` rows to ``path`` when the Trainer evaluates (``--eval-data``)."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.resume_step = resume_step

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if not state.is_world_process_zero or not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if self.resume_step is not None and int(r["step"]) <= self.resume_step]
        with self.path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=("step", "epoch", "eval_loss"))
            writer.writeheader()
            writer.writerows(rows)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kw: Any):
        if not state.is_world_process_zero or not logs or "eval_loss" not in logs:
            return
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=("step", "epoch", "eval_loss"))
            if new:
                writer.writeheader()
            writer.writerow({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                             "eval_loss": logs["eval_loss"]})


class CommitCheckpointCallback(TrainerCallback):
    """After the Trainer saved ``checkpoint-N``, mark it complete, then rotate old ones."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its part (its RNG state) before the commit
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                checkpoints.commit(path, state.global_step)
                checkpoints.rotate(args.output_dir, self.keep)


def tensorboard_callback(log_dir: str | Path) -> TrainerCallback | None:
    """transformers' TensorBoard callback writing to ``log_dir``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))

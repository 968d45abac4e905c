"""The sync-free training step (``train/sync_free.py``) keeps transformers' rules: same logged losses."""

from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import Trainer

from llavakit.train import TrainJob, resolve_recipe, sync_free, train
from llavakit.train.trainer import training_arguments


def test_non_finite_loss_counts_as_the_running_mean() -> None:
    running = torch.tensor(6.0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert sync_free.finite_or_running_mean(torch.tensor(bad), running, 2).item() == 2.0  # 6 / (1 + 2)
    assert sync_free.finite_or_running_mean(torch.tensor(1.5), running, 2).item() == 1.5


def test_batches_are_copied_without_a_sync_only_where_pinned() -> None:
    assert sync_free.accelerator_config(True) == {"non_blocking": True}
    assert sync_free.accelerator_config(False) == {}
    args = training_arguments(resolve_recipe("instruct"), Path("unused"))
    assert args.dataloader_pin_memory == torch.cuda.is_available()


def _logged_losses(tiny_llava: Path, data: Path, out: Path) -> list[float]:
    recipe = resolve_recipe("instruct", overrides={
        "max_steps": 4, "batch_size": 2, "grad_accum": 1, "logging_steps": 2, "save_steps": 100, "warmup_ratio": 0.0,
        "lr_scheduler": "constant", "learning_rate": 1e-3})
    train(TrainJob(model=tiny_llava, data=data, out=out, progress=False, recipe=recipe))
    with (out / "train_log.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row.get("loss")]


def test_trainer_filters_a_nan_step_loss_as_transformers_does(tiny_llava: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              two_train_samples: Path, one_torch_thread: None) -> None:
    """Step 2 reports NaN (its backward is real): the logged losses equal the host-side filter's, and are finite."""
    real_step = Trainer.training_step
    calls = {"n": 0}

    def nan_on_second_step(self, *args, **kwargs):  # noqa: ANN001, ANN202
        loss = real_step(self, *args, **kwargs)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] % 4 == 2 else loss

    monkeypatch.setattr(Trainer, "training_step", nan_on_second_step)
    device = _logged_losses(tiny_llava, two_train_samples, tmp_path / "device")

    @contextmanager
    def host_filter(trainer):  # noqa: ANN001, ANN202 (the reference: transformers' own check)
        yield False

    monkeypatch.setattr(sync_free, "device_loss_filter", host_filter)
    host = _logged_losses(tiny_llava, two_train_samples, tmp_path / "host")
    assert len(device) == 2 and all(math.isfinite(v) for v in device)
    assert device == pytest.approx(host, rel=1e-6)

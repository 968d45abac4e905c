"""Clipping folded into fused AdamW (``train/fused_clip.py``) gives the update ``clip_grad_norm_`` gives."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavakit.train import TrainJob, resolve_recipe, train
from llavakit.train import fused_clip


@pytest.mark.parametrize("scale", [50.0, 0.01])  # gradients far above and below max_norm
def test_fold_equals_clip_then_step(scale: float) -> None:
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.AdamW(n.parameters(), lr=1e-2, fused=True) for n in nets]
    for _ in range(3):
        x = torch.randn(8, 16)
        for net in nets:
            net.zero_grad()
            (net(x).pow(2).sum() * scale).backward()
        want = torch.nn.utils.clip_grad_norm_(nets[0].parameters(), 1.0)
        opts[0].step()
        got = fused_clip.clip_into(opts[1], nets[1].parameters(), 1.0)
        opts[1].step()
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _run(tiny_llava: Path, data: Path, out: Path, optim: str) -> dict[str, torch.Tensor]:
    recipe = resolve_recipe("instruct", overrides={
        "max_steps": 4, "batch_size": 2, "grad_accum": 1, "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0,
        "lr_scheduler": "constant", "learning_rate": 1e-3, "max_grad_norm": 0.05, "extra": {"optim": optim}})
    train(TrainJob(model=tiny_llava, data=data, out=out, progress=False, recipe=recipe))
    return load_file(str(out / "model.safetensors"))


def test_trainer_folds_clipping_into_fused_adamw(tiny_llava: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture, two_train_samples: Path,
                                                 one_torch_thread: None) -> None:
    """Same weights as the Trainer's own clip (max_grad_norm small enough to clip every step); used only if fused."""
    data = two_train_samples
    with caplog.at_level(logging.INFO, logger="llavakit.train"):
        folded = _run(tiny_llava, data, tmp_path / "folded", "adamw_torch_fused")
    assert "folded into the fused optimizer step" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llavakit.train"):
        _run(tiny_llava, data, tmp_path / "foreach", "adamw_torch")  # not fused: the Trainer's clip
    assert "folded" not in caplog.text
    monkeypatch.setattr(fused_clip, "fused_optimizer", lambda trainer, model: None)  # the reference path
    reference = _run(tiny_llava, data, tmp_path / "reference", "adamw_torch_fused")
    assert folded.keys() == reference.keys()
    changed = [k for k in folded if not torch.equal(folded[k], load_file(str(tiny_llava / "model.safetensors"))[k])]
    assert changed  # it trained
    for key in folded:
        torch.testing.assert_close(folded[key], reference[key], rtol=1e-4, atol=1e-6)

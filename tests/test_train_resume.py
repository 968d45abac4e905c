"""Kill a training run mid-way, resume it, and get the loss curve of a run never interrupted.

The killed run is a real ``llavakit train`` process, SIGKILLed right after a
checkpoint is committed (no chance to clean up); a half-written later checkpoint
is left behind as a crash during saving would leave it. ``--resume`` must skip
it, continue from the last complete checkpoint, and reproduce the uninterrupted
run's per-step losses (same data order across the epoch boundary, same
optimizer / scheduler / RNG state) and its final weights.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavakit.train import RecipeError, TrainJob, resolve_recipe, train
from llavakit.train.checkpoints import COMMIT_FILE

LLAVAKIT = str(Path(sys.executable).with_name("llavakit"))  # the console script of this venv
STEPS, SAVE = 16, 4  # 8 samples, batch 2: 4 steps an epoch, so the resume crosses epoch boundaries


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("shapes-resume")
    generate_shapes(root, ShapesConfig(train=8, val=0, test=0, image_size=32, seed=2))
    return root / "train.json"


def _options(model: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--stage", "instruct", "--model", str(model), "--data", str(data), "--out", str(out),
            "--max-steps", str(STEPS), "--save-steps", str(SAVE), "--logging-steps", "1", "--batch-size", "2",
            "--grad-accum", "1", "--lr", "1e-3"]


def _losses(out: Path) -> dict[int, float]:
    with (out / "train_log.csv").open() as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_killed_run_resumes_on_the_same_loss_curve(tiny_llava: Path, data: Path, tmp_path: Path):
    # 1. the reference: one uninterrupted run (in this process, one thread like the subprocesses)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = tmp_path / "uninterrupted"
        recipe = resolve_recipe("instruct", overrides={"max_steps": STEPS, "save_steps": SAVE, "logging_steps": 1,
                                                       "batch_size": 2, "grad_accum": 1, "learning_rate": 1e-3})
        train(TrainJob(model=tiny_llava, data=data, out=ref, recipe=recipe, progress=False))
    finally:
        torch.set_num_threads(threads)

    # 2. the same run in a process of its own, killed as soon as the step-8 checkpoint is committed
    out = tmp_path / "killed"
    cmd = [LLAVAKIT, *_options(tiny_llava, data, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    target = out / "checkpoints" / "checkpoint-8" / COMMIT_FILE
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode(errors="replace")
    assert target.exists(), output
    assert not (out / "llavakit_train.json").exists(), "the run finished before it could be killed"
    killed_at = max(_losses(out))
    assert killed_at < STEPS

    # a save interrupted half-way: a later checkpoint directory without its commit marker
    partial = out / "checkpoints" / "checkpoint-12"
    if not (partial / COMMIT_FILE).exists():
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "model.safetensors").write_bytes(b"truncated")

    # 3. resume: picks checkpoint-8 (or a later committed one), ignores and removes the partial one
    resumed = subprocess.run([LLAVAKIT, *_options(tiny_llava, data, out), "--resume"],
                             check=False, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stderr and "checkpoint-" in resumed.stderr
    record = json.loads((out / "llavakit_train.json").read_text())
    assert record["steps"] == STEPS and record["resumed_from"].endswith(("checkpoint-8", "checkpoint-12"))

    want, got = _losses(ref), _losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # one continuous curve: no step twice, none missing
    assert want[STEPS] < want[1] - 0.1  # the curve moves, so a wrong resume would show
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), (step, want, got)
    final_ref, final_resumed = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for key in final_ref:
        torch.testing.assert_close(final_resumed[key], final_ref[key], rtol=1e-4, atol=1e-5)


def test_lora_run_resumes_on_the_same_loss_curve(tiny_llava: Path, data: Path, tmp_path: Path):
    """A LoRA checkpoint is an adapter (+ projector); resuming from it continues the same curve."""

    def recipe(steps: int):
        return resolve_recipe("instruct", lora=True, overrides={
            "max_steps": steps, "save_steps": 3, "logging_steps": 1, "batch_size": 2, "grad_accum": 1,
            "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
            "lr_scheduler": "constant", "warmup_ratio": 0.0})  # a schedule that does not depend on max_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, split = tmp_path / "ref", tmp_path / "split"
        train(TrainJob(model=tiny_llava, data=data, out=ref, recipe=recipe(6), progress=False))
        train(TrainJob(model=tiny_llava, data=data, out=split, recipe=recipe(3), progress=False))
        assert (split / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").exists()
        result = train(TrainJob(model=tiny_llava, data=data, out=split, recipe=recipe(6), resume=True,
                                progress=False))
    finally:
        torch.set_num_threads(threads)
    assert result.resumed_from is not None and result.resumed_from.name == "checkpoint-3"
    with pytest.raises(RecipeError, match=r"batch_size: 2 -> 4"):  # a different step size cannot continue it
        train(TrainJob(model=tiny_llava, data=data, out=split, progress=False, resume=True,
                       recipe=replace(recipe(8), batch_size=4)))
    want, got = _losses(ref), _losses(split)
    assert sorted(got) == list(range(1, 7)) and want[6] < want[1]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), (step, want, got)


def test_checkpoint_commit_rotation_and_choice(tmp_path: Path):
    """Only committed checkpoints count; rotation keeps the newest committed ones and never an unfinished one."""
    from llavakit.train import checkpoints

    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4, 6):
        checkpoints.commit(tmp_path / f"checkpoint-{step}", step)
    (tmp_path / "checkpoint-8" / "optimizer.pt").write_bytes(b"half")  # being written (or killed while writing)
    assert checkpoints.last_committed(tmp_path) == tmp_path / "checkpoint-6"
    checkpoints.rotate(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert checkpoints.remove_uncommitted(tmp_path) == [tmp_path / "checkpoint-8"]
    assert checkpoints.last_committed(tmp_path) == tmp_path / "checkpoint-6"
    assert json.loads((tmp_path / "checkpoint-6" / COMMIT_FILE).read_text())["step"] == 6


def test_resume_loads_tied_embeddings_and_still_refuses_a_missing_weight(parts, tmp_path: Path):
    """A tied LM (embedding = LM head, as nano and SmolLM2) resumes; a weight truly absent is refused."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText

    from llavakit.checkpoints.build import build_llava
    from llavakit.errors import LlavakitError
    from llavakit.train.checkpoints import load_model_weights

    built = build_llava(parts("vision", "clip"), parts("lm", "qwen2"), tmp_path / "m")  # qwen2: tied
    model = AutoModelForImageTextToText.from_pretrained(str(built))
    model.save_pretrained(tmp_path / "ck")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    load_model_weights(model, tmp_path / "ck")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    weights = load_file(str(tmp_path / "ck" / "model.safetensors"))
    dropped = next(k for k in weights if "layers.0" in k and "q_proj.weight" in k)
    del weights[dropped]
    save_file(weights, str(tmp_path / "ck" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LlavakitError, match="missing"):
        load_model_weights(model, tmp_path / "ck")

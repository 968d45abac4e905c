"""Two processes on the CPU (torchrun, DDP over gloo) train like one process with the same global batch.

``llavakit train`` runs unchanged under ``torchrun --nproc_per_node 2``: the
Trainer shards each global batch over the processes and averages gradients, so
2 processes × batch 1 must end with the weights of 1 process × batch 2 (same
sample order, token-weighted loss across processes). Only rank 0 writes the
log, the commit markers and the final model; every rank writes its RNG state.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavakit.train import TrainJob, resolve_recipe, train

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LLAVAKIT = str(Path(sys.executable).with_name("llavakit"))
STEPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("shapes-ddp")
    generate_shapes(root, ShapesConfig(train=8, val=0, test=0, image_size=32, seed=3))
    return root / "train.json"


def test_two_processes_match_one_with_the_same_global_batch(tiny_llava: Path, data: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", LLAVAKIT, "train", "--stage", "instruct",
           "--model", str(tiny_llava), "--data", str(data), "--out", str(out), "--max-steps", str(STEPS),
           "--batch-size", "1", "--grad-accum", "1", "--save-steps", "2", "--logging-steps", "1", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    record = json.loads((out / "llavakit_train.json").read_text())
    assert record["world_size"] == 2 and record["steps"] == STEPS
    with (out / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # one writer: no duplicated rows
    assert float(rows[0]["epoch"]) == pytest.approx(2 / 8)  # 2 samples a step: one from each process
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "llavakit_commit.json").exists()
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tmp_path / "single"
        recipe = resolve_recipe("instruct", overrides={"max_steps": STEPS, "batch_size": 2, "grad_accum": 1,
                                                       "save_steps": 100, "logging_steps": 1, "learning_rate": 1e-3})
        train(TrainJob(model=tiny_llava, data=data, out=single, recipe=recipe, progress=False))
    finally:
        torch.set_num_threads(threads)
    got, want = load_file(str(out / "model.safetensors")), load_file(str(single / "model.safetensors"))
    base = load_file(str(tiny_llava / "model.safetensors"))
    moved = [k for k in want if not torch.equal(want[k], base[k])]
    assert moved  # training changed the weights, so agreement below means something
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)

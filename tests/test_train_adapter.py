"""Training further what exists: a LoRA adapter (``llavakit train --adapter DIR``) starts from the given
weights, keeps the adapter's rank, and what cannot be continued is refused clearly; a default model is taken by
name (``--model nano``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavakit.errors import LlavakitError
from llavakit.train import RecipeError, TrainJob, resolve_recipe, train

LLAVAKIT = str(Path(sys.executable).with_name("llavakit"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("shapes-adapter")
    generate_shapes(root, ShapesConfig(train=6, val=0, test=0, image_size=32, seed=3))
    return root / "train.json"


def _recipe(steps: int, lr: float, r: int = 8):  # noqa: ANN202 (a Recipe)
    return resolve_recipe("instruct", lora=True, overrides={
        "max_steps": steps, "batch_size": 2, "grad_accum": 1, "learning_rate": lr, "lora_r": r,
        "lora_alpha": 2 * r, "lora_dropout": 0.0, "logging_steps": 1, "save_steps": 1000,
        "weight_decay": 0.0, "warmup_ratio": 0.0, "lr_scheduler": "constant"})


@pytest.fixture(scope="module")
def trained_adapter(tiny_llava: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("first") / "run"
    train(TrainJob(model=tiny_llava, data=data, out=out, recipe=_recipe(3, 1e-2), progress=False))
    assert (out / "adapter_config.json").is_file()  # not merged: the output is the adapter
    return out


def _lora_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items() if "lora_" in k}


def test_a_continued_adapter_starts_from_its_weights_and_keeps_its_rank(tiny_llava: Path, data: Path,
                                                                          trained_adapter: Path, tmp_path: Path):
    given = _lora_tensors(trained_adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in given.items())  # B is 0 when fresh
    # a learning rate too small to move anything: the output is the input adapter, not a fresh LoRA (B = 0)
    still = tmp_path / "still"
    result = train(TrainJob(model=tiny_llava, data=data, out=still, recipe=_recipe(1, 1e-12, r=4), progress=False,
                            adapter=trained_adapter))
    assert json.loads((still / "recipe.json").read_text())["lora_r"] == 8  # the adapter's rank, not the option's
    assert json.loads((still / "llavakit_train.json").read_text())["adapter_from"] == str(trained_adapter.resolve())
    kept = _lora_tensors(result.adapter)
    assert kept.keys() == given.keys()
    for key, value in given.items():
        torch.testing.assert_close(kept[key], value, rtol=0, atol=1e-6)
    # a real step size moves it on: the loss keeps falling from where the first run left it
    moved = tmp_path / "moved"
    train(TrainJob(model=tiny_llava, data=data, out=moved, recipe=_recipe(3, 1e-2), progress=False,
                   adapter=trained_adapter))
    assert any(not torch.allclose(v, given[k]) for k, v in _lora_tensors(moved).items())


def test_the_cli_continues_an_adapter_and_implies_lora(tiny_llava: Path, data: Path, trained_adapter: Path,
                                                        tmp_path: Path):
    out = tmp_path / "cli"
    proc = subprocess.run([LLAVAKIT, "train", "--stage", "instruct", "--model", str(tiny_llava), "--data", str(data),
                           "--out", str(out), "--adapter", str(trained_adapter), "--max-steps", "1",
                           "--batch-size", "2", "--merge-lora"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "recipe.json").read_text())["lora"] is True


def test_what_cannot_be_continued_is_refused_clearly(tiny_llava: Path, data: Path, trained_adapter: Path,
                                                      tmp_path: Path):
    with pytest.raises(LlavakitError, match="not a LoRA adapter directory"):
        train(TrainJob(model=tiny_llava, data=data, out=tmp_path / "a", recipe=_recipe(1, 1e-3), progress=False,
                       adapter=tmp_path / "missing"))
    full = resolve_recipe("instruct", overrides={"max_steps": 1})
    with pytest.raises(RecipeError, match="needs lora=true"):
        train(TrainJob(model=tiny_llava, data=data, out=tmp_path / "b", recipe=full, progress=False,
                       adapter=trained_adapter))
    other = tmp_path / "other"  # an adapter whose targets this model does not have
    shutil.copytree(trained_adapter, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_layer"]
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(LlavakitError, match="does not fit --model"):
        train(TrainJob(model=tiny_llava, data=data, out=tmp_path / "c", recipe=_recipe(1, 1e-3), progress=False,
                       adapter=other))


def test_a_default_model_is_trained_by_name(data: Path, tmp_path: Path):
    from llavakit.checkpoints.nano import nano_model_dir

    out = tmp_path / "nano-more"
    recipe = resolve_recipe("instruct", overrides={"max_steps": 1, "batch_size": 2, "learning_rate": 1e-5})
    result = train(TrainJob(model="nano", data=data, out=out, recipe=recipe, progress=False))
    assert result.steps == 1 and (out / "config.json").is_file()
    assert json.loads((out / "llavakit_train.json").read_text())["base_model"] == str(nano_model_dir().resolve())
    with pytest.raises(LlavakitError, match="neither a local directory nor a hub id"):
        train(TrainJob(model="no-such-model", data=data, out=tmp_path / "x", recipe=recipe, progress=False))
    assert not (tmp_path / "x").exists()  # a wrong --model leaves no output folder behind

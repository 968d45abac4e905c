"""Training stages on tiny random models: what trains, what stays bit-identical, outputs that load.

Every run is a real transformers Trainer run on a real tiny LLaVA (random CLIP +
random Llama from ``conftest``) and real shapes-world samples (H2's generator,
read through ``llavakit.data``). Nothing is mocked.
"""

from __future__ import annotations

import csv
import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from llavakit.errors import LlavakitError
from llavakit.train import RecipeError, TrainJob, default_recipe, resolve_recipe, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster (no spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(train=8, val=0, test=0, image_size=32, seed=1))
    return root


@pytest.fixture(scope="module")
def two_samples(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-sample training file: with batch size 2 every step sees the same batch."""
    rows = json.loads((shapes / "train.json").read_text())[:2]
    for row in rows:
        row["image"] = str(shapes / row["image"])
    path = tmp_path_factory.mktemp("two") / "two.json"
    path.write_text(json.dumps(rows))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _parts(weights: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    key = {"vision": "vision_tower", "projector": "multi_modal_projector", "lm": "language_model"}[part]
    chosen = {k: v for k, v in weights.items() if key in k}
    if part == "lm":
        chosen.update({k: v for k, v in weights.items() if k.startswith("lm_head")})
    assert chosen, f"no {part} weights found"
    return chosen


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(out: Path) -> list[float]:
    with (out / "train_log.csv").open() as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _fast(stage: str, lora: bool = False, **changes) -> object:
    base = {"max_steps": 12, "batch_size": 2, "grad_accum": 1, "logging_steps": 1, "save_steps": 100,
            "warmup_ratio": 0.0, "lr_scheduler": "constant", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    base.update(changes)
    return resolve_recipe(stage, lora=lora, overrides=base)


# ------------------------------------------------------------------------------------------ recipes


def test_default_recipes_are_the_published_ones_scaled_down():
    align = default_recipe("align")
    assert (align.learning_rate, align.train_projector, align.train_lm, align.train_vision) == (1e-3, True, False, False)
    full = default_recipe("instruct")
    assert (full.learning_rate, full.train_lm, full.lora, full.train_vision) == (2e-5, True, False, False)
    assert default_recipe("instruct", lora=True).learning_rate == 2e-4


def test_recipe_file_then_options(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("learning_rate: 5.0e-4\nbatch_size: 3\nlora: true\n")
    recipe = resolve_recipe("instruct", recipe_file=path, overrides={"batch_size": 5})
    assert (recipe.learning_rate, recipe.batch_size, recipe.lora) == (5e-4, 5, True)
    (tmp_path / "r.json").write_text(json.dumps({"max_steps": 7}))
    assert resolve_recipe("align", recipe_file=tmp_path / "r.json").max_steps == 7


@pytest.mark.parametrize("content, match", [
    ("learning_rte: 1.0e-3\n", "unknown recipe field 'learning_rte'"),
    ("batch_size: two\n", "'batch_size' must be int"),
    ("stage: align\n", "is for stage 'align' but --stage is 'instruct'"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("lora: true\ntrain_lm: false\n", "needs train_lm=true"),
    ("a: [1\n", "could not parse"),
])
def test_bad_recipe_files_are_refused_by_name(tmp_path: Path, content: str, match: str):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(RecipeError, match=match.replace("[", r"\[")):
        resolve_recipe("instruct", recipe_file=path)


# ------------------------------------------------------------------------------------------ stages


def test_align_trains_only_the_projector(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    out = tmp_path / "align"
    result = train(TrainJob(model=tiny_llava, data=two_samples, out=out, progress=False,
                            recipe=_fast("align", learning_rate=1e-2)))
    assert result.steps == 12 and result.trainable.trainable["vision"] == 0 and result.trainable.trainable["lm"] == 0
    before, after = _weights(tiny_llava), _weights(out)
    assert _same(_parts(before, "vision"), _parts(after, "vision"))
    assert _same(_parts(before, "lm"), _parts(after, "lm"))
    assert not _same(_parts(before, "projector"), _parts(after, "projector"))
    losses = _losses(out)
    assert len(losses) == 12
    # the same batch, repeated: the loss must fall, step after step
    # (a frozen random LM caps how far the projector alone can move it; the fall is steady, not large)
    assert losses[-1] < losses[0] - 0.005 and sum(b < a for a, b in pairwise(losses)) >= 9, losses
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["stage"] == "align" and saved["learning_rate"] == 1e-2
    record = json.loads((out / "llavakit_train.json").read_text())
    assert record["steps"] == 12 and record["world_size"] == 1
    assert not (out / "llavakit_build.json").exists()  # a plain JSON of samples and an undeclared base: no claims
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # tensorboard is in the dev extra


def test_instruct_full_trains_lm_and_projector_not_vision(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    out = tmp_path / "full"
    train(TrainJob(model=tiny_llava, data=two_samples, out=out, progress=False,
                   recipe=_fast("instruct", max_steps=6, learning_rate=1e-3)))
    before, after = _weights(tiny_llava), _weights(out)
    assert _same(_parts(before, "vision"), _parts(after, "vision"))
    assert not _same(_parts(before, "lm"), _parts(after, "lm"))
    assert not _same(_parts(before, "projector"), _parts(after, "projector"))
    losses = _losses(out)
    assert losses[-1] < losses[0] - 0.1, losses


def test_instruct_lora_adapter_and_merge(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    from llavakit import Pipeline
    from llavakit.train.lora import load_adapter, merge_lora

    kept = tmp_path / "lora-adapter"
    train(TrainJob(model=tiny_llava, data=two_samples, out=kept, progress=False,
                   recipe=_fast("instruct", lora=True, max_steps=4, learning_rate=1e-2)))
    config = json.loads((kept / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and Path(config["base_model_name_or_path"]) == tiny_llava.resolve()
    assert not (kept / "model.safetensors").exists() and (kept / "chat_template.jinja").exists()

    merged_dir = tmp_path / "lora-merged"
    train(TrainJob(model=tiny_llava, data=two_samples, out=merged_dir, progress=False,
                   recipe=_fast("instruct", lora=True, max_steps=4, learning_rate=1e-2, merge_lora=True)))
    assert (merged_dir / "adapter" / "adapter_config.json").exists()
    before, after = _weights(tiny_llava), _weights(merged_dir)
    assert after.keys() == before.keys()  # a plain LLaVA: no lora_ / base_layer keys left
    assert _same(_parts(before, "vision"), _parts(after, "vision"))
    assert not _same(_parts(before, "lm"), _parts(after, "lm"))

    # the adapter on the base computes what the merged model computes
    peft_model = load_adapter(tiny_llava, merged_dir / "adapter").eval()
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merge_lora(peft_model)(input_ids=ids).logits, merged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)

    pipe = Pipeline(merged_dir, backend="torch")  # processor, tokenizer and chat template came along
    image = json.loads(two_samples.read_text())[0]["image"]
    result = pipe.generate("What colour is the shape?", images=[image], max_new_tokens=4)
    assert isinstance(result.text, str) and len(result.token_ids) >= 1


# ------------------------------------------------------------------------------------ CLI and errors


def test_cli_train_with_recipe_file(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    from llavakit.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 3\nbatch_size: 2\nlogging_steps: 1\nlearning_rate: 2.0e-3\n")
    out = tmp_path / "cli"
    args = ["train", "--stage", "align", "--model", str(tiny_llava), "--data", str(two_samples), "--out", str(out),
            "--recipe", str(recipe), "--lr", "3e-3", "--save-steps", "2", "--eval-data", str(two_samples)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "align: 3 steps on 2 samples" in result.output
    saved = json.loads((out / "recipe.json").read_text())
    assert (saved["max_steps"], saved["batch_size"], saved["learning_rate"], saved["save_steps"]) == (3, 2, 3e-3, 2)
    assert (out / "checkpoints" / "checkpoint-2" / "llavakit_commit.json").exists()
    assert len(_losses(out)) == 3
    with (out / "eval_log.csv").open() as fh:
        evals = list(csv.DictReader(fh))
    assert 2 in [int(r["step"]) for r in evals] and all(float(r["eval_loss"]) > 0 for r in evals)

    again = CliRunner().invoke(app, args)  # same --out again: refused, nothing lost
    assert again.exit_code == 2 and "--resume" in again.output and "--force" in again.output
    assert (out / "model.safetensors").exists()


def test_bad_inputs_are_clear_errors(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    bad = tmp_path / "bad.json"
    rows = json.loads(two_samples.read_text())
    rows[1]["image"] = str(tmp_path / "missing.png")
    bad.write_text(json.dumps(rows))
    with pytest.raises(LlavakitError, match="missing.png"):
        train(TrainJob(model=tiny_llava, data=bad, out=tmp_path / "o1", recipe=_fast("align"), progress=False))
    with pytest.raises(LlavakitError, match="MoE-LLaVA"):
        train(TrainJob(model=tiny_llava, data=two_samples, out=tmp_path / "o2", recipe=_fast("moe"), progress=False))
    with pytest.raises(LlavakitError, match="not a model directory"):
        train(TrainJob(model=tmp_path, data=two_samples, out=tmp_path / "o3", recipe=_fast("align"), progress=False))
    with pytest.raises(RecipeError, match="packing=true needs"):
        train(TrainJob(model=tiny_llava, data=two_samples, out=tmp_path / "o4", progress=False,
                       recipe=_fast("align", packing=True)))


def test_moe_stage_trains_experts_routers_projector_only(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    from transformers import AutoModelForImageTextToText

    from llavakit.checkpoints.upcycle import upcycle

    moe = upcycle(tiny_llava, tmp_path / "moe", num_experts=2, top_k=1)
    out = tmp_path / "moe-out"
    result = train(TrainJob(model=moe, data=two_samples, out=out, progress=False,
                            recipe=_fast("moe", max_steps=3, learning_rate=1e-2, router_aux_loss_coef=0.05)))
    assert result.trainable.trainable["vision"] == 0 and 0 < result.trainable.trainable["lm"]
    before, after = _weights(moe), _weights(out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".experts." in k for k in changed) and any(".router." in k for k in changed)
    assert any("multi_modal_projector" in k for k in changed)
    assert all(".experts." in k or ".router." in k or "multi_modal_projector" in k for k in changed), changed
    trained = AutoModelForImageTextToText.from_pretrained(out)
    assert trained.config.model_type == "moe_llava" and trained.config.moe["router_aux_loss_coef"] == 0.05


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipe_files_are_valid(path: Path):
    import yaml

    stage = yaml.safe_load(path.read_text())["stage"]
    recipe = resolve_recipe(stage, recipe_file=path)
    assert recipe.stage == stage


def test_speed_options_keep_the_loss_curve(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    """bf16 autocast (+ padding to multiples of 8) and length grouping: same curve within bf16 precision."""
    runs = {}
    for name, changes in {"fp32": {}, "fast": {"bf16": True, "group_by_length": True}}.items():
        out = tmp_path / name
        train(TrainJob(model=tiny_llava, data=two_samples, out=out, progress=False,
                       recipe=_fast("instruct", max_steps=5, learning_rate=1e-3, **changes)))
        runs[name] = _losses(out)
    assert json.loads((tmp_path / "fast" / "recipe.json").read_text())["bf16"] is True
    for a, b in zip(runs["fp32"], runs["fast"], strict=True):
        assert b == pytest.approx(a, rel=0.01), runs


def test_moe_stage_with_lora_merges_into_a_moe_llava(tiny_llava: Path, two_samples: Path, tmp_path: Path):
    from transformers import AutoModelForImageTextToText

    from llavakit.checkpoints.upcycle import upcycle

    moe = upcycle(tiny_llava, tmp_path / "moe", num_experts=2, top_k=1)
    out = tmp_path / "moe-lora"
    result = train(TrainJob(model=moe, data=two_samples, out=out, progress=False,
                            recipe=_fast("moe", lora=True, max_steps=2, merge_lora=True)))
    assert result.trainable.trainable["projector"] == result.trainable.total["projector"] // 2  # PEFT's copy frozen
    assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == "moe_llava"
    assert (out / "adapter" / "adapter_config.json").exists()

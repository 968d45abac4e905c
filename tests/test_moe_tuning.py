"""MoE-tuning (stage 3) on a tiny upcycled model with a plain torch loop: only experts, routers
and the projector move; the loss carries the load-balancing term; LoRA keeps base experts fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.upcycle import upcycle
from llavakit.models.moe_llava import MoEError
from llavakit.train.moe_freeze import prepare_moe_tuning


@pytest.fixture(scope="module")
def moe_dir(parts, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moe-tune")
    dense = build_llava(parts("vision", "clip"), parts("lm", "llama"), root / "dense")
    return upcycle(dense, root / "moe", num_experts=4, top_k=2, layers="dense")


def batch(moe_dir: Path) -> dict[str, torch.Tensor]:
    processor = AutoProcessor.from_pretrained(moe_dir)
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    texts = ["<image> What colour? red circle left", "<image> What colour? blue square right"]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = inputs["input_ids"].clone()
    labels[labels == processor.tokenizer.convert_tokens_to_ids("<image>")] = -100
    labels[inputs["attention_mask"] == 0] = -100
    return {**inputs, "labels": labels}


def train_steps(model, inputs, steps: int = 3) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(**inputs)
        assert out.aux_loss is not None
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    return losses


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_only_experts_routers_projector_train(moe_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(moe_dir)
    prepare_moe_tuning(model)
    assert model.training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = batch(moe_dir)
    losses = train_steps(model, inputs)
    moved = changed(model, before)
    allowed = lambda n: ".mlp.experts." in n or ".mlp.router." in n or "multi_modal_projector" in n
    assert moved and all(allowed(n) for n in moved), sorted(n for n in moved if not allowed(n))
    assert {n for n in before if ".router." in n} <= moved
    assert {n for n in before if "multi_modal_projector" in n} <= moved
    for layer in range(2):  # every MoE layer: some expert learned
        assert any(f"layers.{layer}.mlp.experts." in n for n in moved)
    assert losses[-1] < losses[0]


def test_lora_trains_adapters_routers_projector(moe_dir: Path, tiny_llava: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = AutoModelForImageTextToText.from_pretrained(moe_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)")
    model = get_peft_model(model, config)
    prepare_moe_tuning(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".router." in n or "multi_modal_projector" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, batch(moe_dir), steps=2)
    moved = changed(model, before)
    assert moved <= trainable and any("lora_B" in n for n in moved)

    dense = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    with pytest.raises(MoEError, match="upcycle the dense model first"):
        prepare_moe_tuning(dense)


def test_train_dense_ffn_matches_reference_name_rule(tiny_llava: Path, tmp_path: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(upcycle(tiny_llava, tmp_path / "sparse", layers="sparse"))
    prepare_moe_tuning(model)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "language_model.layers.1.mlp." in n)
    prepare_moe_tuning(model, train_dense_ffn=True)  # the reference's train_modules match every layer's FFN
    assert all(p.requires_grad for n, p in model.named_parameters() if "language_model.layers.1.mlp." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "self_attn" in n or "vision" in n)


def test_moe_stage_under_torchrun_two_processes(moe_dir: Path, tmp_path: Path) -> None:
    """``llavakit train --stage moe`` runs unchanged under torchrun (DDP over gloo, as the other stages):
    rank 0 writes a model in which only experts, routers and the projector moved."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from llavakit.data.shapes import ShapesConfig, generate_shapes

    generate_shapes(tmp_path / "data", ShapesConfig(train=8, val=0, test=0, image_size=32, seed=4))
    bin_dir = Path(sys.executable).parent
    out = tmp_path / "ddp"
    cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", str(bin_dir / "llavakit"), "train",
           "--stage", "moe", "--model", str(moe_dir), "--data", str(tmp_path / "data" / "train.json"),
           "--out", str(out), "--max-steps", "2", "--batch-size", "1", "--grad-accum", "1", "--save-steps", "100",
           "--lr", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((out / "llavakit_train.json").read_text())["world_size"] == 2
    # trained on `llavakit data shapes` output: its exports calibrate on shapes world (export/declared.py)
    assert json.loads((out / "llavakit_build.json").read_text())["calibration"] == "shapes"
    before, after = load_file(str(moe_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = lambda n: ".mlp.experts." in n or ".mlp.router." in n or "multi_modal_projector" in n
    assert moved and all(allowed(n) for n in moved), sorted(n for n in moved if not allowed(n))
    assert any(".mlp.router." in n for n in moved)

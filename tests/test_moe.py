"""MoE-LLaVA model and upcycling: routing against a plain-loop reference, capacity, aux loss,
function-preserving upcycling for every LM family, expert-usage statistics, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.random_parts import LM_FAMILIES
from llavakit.checkpoints.upcycle import parse_layers, upcycle
from llavakit.errors import BuildError
from llavakit.models.moe_block import MoEBlock
from llavakit.models.moe_llava import (
    MoEError,
    MoeLlavaForConditionalGeneration,
    moe_layer_indices,
    normalize_moe,
)


class TinyMLP(torch.nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.up = torch.nn.Linear(c, 16)
        self.down = torch.nn.Linear(16, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def make_block(experts: int = 4, k: int = 2, cf: float = 1.5, seed: int = 0) -> MoEBlock:
    torch.manual_seed(seed)
    block = MoEBlock(TinyMLP(), 8, experts, k, capacity_factor=cf)
    for e in block.experts:  # make the experts differ, as after training
        for p in e.parameters():
            torch.nn.init.normal_(p)
    return block


def loop_reference(block: MoEBlock, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Independent routing: token by token, expert by expert, in Python; DeepSpeed's queue order."""
    flat = x.reshape(-1, x.shape[-1])
    E, k = block.num_experts, block.top_k
    choices = []
    for t in range(flat.shape[0]):
        logits = [float(sum(block.router.weight[e, c].item() * flat[t, c].item() for c in range(flat.shape[1])))
                  for e in range(E)]
        z = [math.exp(v - max(logits)) for v in logits]
        p = [v / sum(z) for v in z]
        chosen = sorted(range(E), key=lambda e: (-p[e], e))[:k]
        choices.append([(e, p[e]) for e in chosen])
    kept = [[True] * k for _ in choices]
    if capacity is not None:
        load = [0] * E
        for r in range(k):  # all first choices, then all second choices
            for t, ch in enumerate(choices):
                e = ch[r][0]
                kept[t][r] = load[e] < capacity
                load[e] += kept[t][r]
    out = torch.zeros_like(flat)
    for t, ch in enumerate(choices):
        total = sum(w for (e, w), keep in zip(ch, kept[t]) if keep)
        for (e, w), keep in zip(ch, kept[t]):
            if keep:
                out[t] += (w / total) * block.experts[e](flat[t:t + 1])[0]
    return out.reshape(x.shape)


def test_routing_matches_plain_loop() -> None:
    block = make_block().eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), loop_reference(block, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(x[:1, 2:3]), block(x)[:1, 2:3], rtol=1e-5, atol=1e-6)  # no batch coupling


def test_capacity_drops_overflow_in_training_only() -> None:
    block = make_block(cf=0.5)  # capacity = ceil(2·10/4·0.5) = 3 of the 20 assignments per expert
    x = torch.randn(1, 10, 8)
    with torch.no_grad():
        block.train()
        torch.testing.assert_close(block(x), loop_reference(block, x, capacity=3), rtol=1e-5, atol=1e-5)
        block.eval()
        torch.testing.assert_close(block(x), loop_reference(block, x), rtol=1e-5, atol=1e-5)


def test_ties_go_to_the_lower_expert() -> None:
    block = make_block(k=1).eval()
    with torch.no_grad():
        block.router.weight.zero_()  # every expert equally likely
        x = torch.randn(3, 8)
        torch.testing.assert_close(block(x), block.experts[0](x))


def test_aux_loss_formula_and_added_to_lm_loss(tiny_moe: Path) -> None:
    block = make_block()
    x = torch.randn(12, 8)
    block(x)
    probs = torch.softmax(x @ block.router.weight.T, -1)
    top1 = probs.argmax(-1)
    me = probs.mean(0)
    ce = torch.stack([(top1 == e).float().mean() for e in range(4)])
    torch.testing.assert_close(block.aux_loss, 4 * 4 * (me * ce).mean())

    model = AutoModelForImageTextToText.from_pretrained(tiny_moe)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    out = model(input_ids=ids, labels=ids)
    plain = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    expected = plain + 0.01 * sum(b.aux_loss for b in model.moe_blocks().values())
    torch.testing.assert_close(out.loss, expected)
    assert out.aux_loss is not None and out.aux_loss > 0


def test_layer_modes_and_bad_settings() -> None:
    assert moe_layer_indices("sparse", 6) == [0, 2, 4]
    assert moe_layer_indices("first_half", 6) == [0, 1, 2]
    assert moe_layer_indices("second_half", 6) == [3, 4, 5]
    assert moe_layer_indices("dense", 3) == [0, 1, 2]
    assert parse_layers("0,2,5") == [0, 2, 5] and parse_layers("sparse") == "sparse"
    assert normalize_moe({"moe_layers_idx": [1]}, 4)["moe_mode"] == "custom"
    for bad, match in [({"moe_mode": "every_third"}, "unknown MoE layer mode"),
                       ({"moe_layers_idx": [7]}, "within 0..3"), ({"top_k_experts": 5}, "top_k_experts"),
                       ({"use_residual": True}, "use_residual"), ({"nope": 1}, "unknown key")]:
        with pytest.raises(MoEError, match=match):
            normalize_moe(bad, 4)


@pytest.fixture(scope="module")
def dense_llavas(parts, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense")
    return {f: build_llava(parts("vision", "clip"), parts("lm", f), root / f) for f in LM_FAMILIES}


@pytest.fixture(scope="module")
def tiny_moe(dense_llavas, tmp_path_factory) -> Path:
    return upcycle(dense_llavas["llama"], tmp_path_factory.mktemp("moe") / "llama", 4, 2, "dense")


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_upcycled_equals_dense(family: str, dense_llavas, tmp_path: Path, red_image) -> None:
    from llavakit import Pipeline

    moe_dir = upcycle(dense_llavas[family], tmp_path / "moe", 4, 2, "sparse")
    config = json.loads((moe_dir / "config.json").read_text())
    assert config["model_type"] == "moe_llava" and config["moe"]["moe_layers_idx"] == [0]
    dense = Pipeline(dense_llavas[family], backend="torch")
    moe = Pipeline(moe_dir, backend="torch")
    assert isinstance(moe.backend.model, MoeLlavaForConditionalGeneration)
    a = dense.generate("What is this?", images=[red_image], max_new_tokens=6, ignore_eos=True)
    b = moe.generate("What is this?", images=[red_image], max_new_tokens=6, ignore_eos=True)
    assert a.token_ids == b.token_ids
    usage = moe.backend.expert_usage()
    n_positions = b.metrics.prompt_tokens + len(b.token_ids) - 1
    assert list(usage) == [0] and sum(usage[0]) == 2 * n_positions  # top-2 per computed position
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    with torch.no_grad():
        torch.testing.assert_close(moe.backend.model(input_ids=ids).logits, dense.backend.model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)


def test_upcycle_refuses_bad_input(dense_llavas, tiny_moe: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="already exists"):
        upcycle(dense_llavas["llama"], tiny_moe)
    with pytest.raises(BuildError, match="needs a dense 'llava'"):
        upcycle(tiny_moe, tmp_path / "again")
    with pytest.raises(MoEError, match="top_k_experts"):
        upcycle(dense_llavas["llama"], tmp_path / "k", num_experts=2, top_k=3)
    assert not (tmp_path / "k").exists()


def test_cli_upcycle(dense_llavas, tmp_path: Path) -> None:
    cli = str(Path(sys.executable).with_name("llavakit"))
    done = subprocess.run([cli, "upcycle", str(dense_llavas["qwen2"]), "--experts", "3", "--top-k", "1",
                           "--layers", "1", "--out", str(tmp_path / "m")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    moe = json.loads((tmp_path / "m" / "config.json").read_text())["moe"]
    assert moe["num_experts"] == [3] and moe["top_k_experts"] == 1 and moe["moe_layers_idx"] == [1]
    bad = subprocess.run([cli, "upcycle", str(dense_llavas["qwen2"]), "--layers", "odd", "--out",
                          str(tmp_path / "n")], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown MoE layer mode 'odd'" in bad.stderr

"""MoE-LLaVA through the OpenVINO export and engine: INT8 greedy tokens and expert usage equal torch fp32,
INT4 agrees teacher-forced; the IR dispatches sparsely (one NonZero per expert), keeps the router float and
sorts stably (ties to the lower expert, as in torch); the engine's usage outputs leave the files untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaForConditionalGeneration,
)

from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.upcycle import upcycle_model
from llavakit.export.compress import CompressionOptions
from llavakit.export.exporter import export_openvino

PROMPT = "Describe the picture."


@pytest.fixture(scope="module")
def trained_moe(parts, tmp_path_factory) -> Path:
    """An upcycled tiny MoE whose experts and routers were pushed apart, as MoE-tuning would."""
    root = tmp_path_factory.mktemp("moe-export")
    dense = build_llava(parts("vision", "clip"), parts("lm", "llama"), root / "dense")
    model = upcycle_model(LlavaForConditionalGeneration.from_pretrained(dense), 4, 2, "sparse")
    torch.manual_seed(0)
    with torch.no_grad():
        for block in model.moe_blocks().values():
            for p in block.experts.parameters():
                p.add_(torch.randn_like(p) * p.std())
            block.router.weight.normal_(0, 1.0)
    model.save_pretrained(root / "moe")
    AutoProcessor.from_pretrained(dense).save_pretrained(root / "moe")
    return root / "moe"


@pytest.fixture(scope="module")
def torch_result(trained_moe: Path, red_image_module):
    from llavakit import Pipeline

    pipe = Pipeline(trained_moe, backend="torch")
    result = pipe.generate(PROMPT, images=[red_image_module], max_new_tokens=12, ignore_eos=True)
    assert result.metrics.expert_usage == pipe.backend.expert_usage()
    return result


@pytest.fixture(scope="module")
def torch_answer(torch_result) -> list[int]:
    return torch_result.token_ids


@pytest.fixture(scope="module")
def red_image_module():
    from PIL import Image

    return Image.new("RGB", (40, 30), (200, 30, 30))


def export(model: Path, tmp: Path, weights: str) -> Path:
    options = CompressionOptions(weights=weights, vision="fp32", text_embeddings="fp32")
    return export_openvino(model, tmp / f"ov-{weights}", options, show_progress=False)


@pytest.mark.parametrize("weights", ["int8"])
def test_greedy_tokens_equal_torch(weights: str, trained_moe: Path, torch_result, red_image_module,
                                   tmp_path: Path) -> None:
    from llavakit import Pipeline

    out = export(trained_moe, tmp_path, weights)
    ir = ov.Core().read_model(out / "openvino_language_model.xml")
    kinds = [op.get_type_name() for op in ir.get_ops()]
    assert kinds.count("NonZero") == 4  # one token selection per expert of the one MoE layer: sparse dispatch
    routers = [op for op in ir.get_ops() if op.get_type_name() == "Constant"
               and list(op.get_output_shape(0))[-2:] == [4, 32]]
    assert routers and all(op.get_element_type().is_real() for op in routers)  # router left in float
    topk = [op for op in ir.get_ops() if op.get_type_name() == "TopK"]
    assert len(topk) == 1 and topk[0].get_attributes()["stable"]  # deterministic ties, as torch's stable sort
    assert [o.get_any_name() for o in ir.outputs] == ["logits"]  # usage outputs are the engine's, not the file's
    pipe = Pipeline(out, precise=True)
    got = pipe.generate(PROMPT, images=[red_image_module], max_new_tokens=12, ignore_eos=True)
    assert got.token_ids == torch_result.token_ids
    assert got.metrics.expert_usage == torch_result.metrics.expert_usage  # same experts fired, layer by layer
    n_positions = got.metrics.prompt_tokens + len(got.token_ids) - 1
    assert sum(got.metrics.expert_usage[0]) == 2 * n_positions
    again = pipe.generate(PROMPT, images=[red_image_module], max_new_tokens=12, ignore_eos=True)
    assert again.metrics.cached_tokens > 0  # prefix reused: only the recomputed positions count
    assert sum(again.metrics.expert_usage[0]) == 2 * (n_positions - again.metrics.cached_tokens)
    twin = pipe.fork()
    assert twin.generate(PROMPT, images=[red_image_module], max_new_tokens=12,
                         ignore_eos=True).metrics.expert_usage == torch_result.metrics.expert_usage


def test_int4_agrees_teacher_forced(trained_moe: Path, torch_answer, red_image_module, tmp_path: Path) -> None:
    from llavakit import Pipeline

    engine = Pipeline(export(trained_moe, tmp_path, "int4"), precise=True).backend
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    logits = engine.prefill(engine.prepare(messages, [red_image_module]))
    agree = []
    for token in torch_answer:  # feed torch's tokens, compare each next-token choice
        agree.append(int(np.argmax(logits)) == token)
        logits = engine.decode_one(token)
    assert agree[0] and sum(agree) / len(agree) >= 0.75, agree


def test_ties_route_to_the_lower_experts_on_openvino(trained_moe: Path, red_image_module, tmp_path: Path) -> None:
    """A zero router makes every expert equally likely: torch and the engine both pick experts 0 and 1."""
    from llavakit import Pipeline

    model = AutoModelForImageTextToText.from_pretrained(trained_moe)
    with torch.no_grad():
        for block in model.moe_blocks().values():
            block.router.weight.zero_()
    model.save_pretrained(tmp_path / "tied")
    AutoProcessor.from_pretrained(trained_moe).save_pretrained(tmp_path / "tied")
    want = Pipeline(tmp_path / "tied", backend="torch").generate(PROMPT, images=[red_image_module],
                                                                 max_new_tokens=4, ignore_eos=True)
    got = Pipeline(export(tmp_path / "tied", tmp_path, "fp32"), precise=True).generate(
        PROMPT, images=[red_image_module], max_new_tokens=4, ignore_eos=True)
    n = got.metrics.prompt_tokens + 3
    assert got.metrics.expert_usage == want.metrics.expert_usage == {0: [n, n, 0, 0]}
    assert got.token_ids == want.token_ids


def test_dense_export_has_no_expert_usage(ov_pipeline) -> None:
    result = ov_pipeline.generate("Hi", max_new_tokens=2)
    assert result.metrics.expert_usage is None and ov_pipeline.backend.expert_usage() is None
